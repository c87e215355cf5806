"""The registry's public seams: ``recording`` (what a plugin registered, tagged with its source) and
``snapshot`` / ``restore`` / ``isolated`` (tests undo their registrations without touching private tables)."""

from __future__ import annotations

import pytest

from benchmark.errors import CambenchError
from benchmark.methods import METHODS
from benchmark.registry import Registry


def _registry() -> Registry:
    reg: Registry = Registry("widget")
    reg.add("plain", 1, family="a")
    reg.add_prefix("lib", lambda rest: (rest.upper(), {"family": "b"}), lambda: ["x", "y"])
    return reg


def test_recording_tags_and_records_in_order() -> None:
    reg = _registry()
    with reg.recording("mine.py") as added:
        reg.add("one", 1)
        reg.add("two", 2, source="explicit")  # a registration that names its source keeps it
        reg.add("plain", 3, override=True)
    reg.add("after", 4)
    assert added == ["one", "two", "plain"]
    assert reg.entry("one").source == "mine.py" and reg.entry("two").source == "explicit"
    assert reg.entry("plain").meta == {"source": "mine.py"} and "source" not in reg.entry("after").meta


def test_recording_nests_and_names_the_plugin_in_a_clash() -> None:
    reg = _registry()
    with reg.recording("outer.py") as outer:
        reg.add("a", 1)
        with reg.recording("inner.py") as inner:
            reg.add("b", 2)
            with pytest.raises(
                CambenchError,
                match=r"widget 'plain' is already registered \(by cambench\); "
                r"inner.py tried to register it again",
            ):
                reg.add("plain", 3)
        reg.add("c", 3)
    assert (outer, inner) == (["a", "c"], ["b"]) and reg.entry("b").source == "inner.py"
    assert reg.get("plain") == 1


def test_recording_stops_when_the_block_raises() -> None:
    reg = _registry()
    with pytest.raises(RuntimeError), reg.recording("bad.py") as added:
        reg.add("x", 1)
        raise RuntimeError("boom")
    reg.add("y", 2)
    assert added == ["x"] and "source" not in reg.entry("y").meta


def test_snapshot_restore_undoes_adds_removes_replacements_and_prefixes() -> None:
    reg = _registry()
    assert reg.get("lib/x") == "X"  # resolved and cached
    state = reg.snapshot()
    reg.add("new", 5)
    reg.remove("plain")
    reg.add("lib/x", "mine", override=True)
    reg.add_prefix("other", lambda rest: (rest, {}))
    assert reg.list() == ["lib/x", "new"] and reg.prefixes() == ["lib", "other"]
    reg.restore(state)
    assert reg.list() == ["plain"] and reg.prefixes() == ["lib"] and reg.get("lib/x") == "X"
    assert reg.entry("plain").family == "a" and "new" not in reg
    reg.add("again", 6)
    reg.restore(state)  # a snapshot can be restored more than once
    assert reg.list() == ["plain"]


def test_restore_refuses_another_registrys_snapshot() -> None:
    with pytest.raises(CambenchError, match=r"Cannot restore the widget registry from a snapshot of 'gadget'"):
        _registry().restore(Registry("gadget").snapshot())
    with pytest.raises(CambenchError, match=r"pass the value that WIDGETS.snapshot\(\) returned"):
        _registry().restore({"plain": 1})  # type: ignore[arg-type]


def test_isolated_on_a_global_registry() -> None:
    builtin = METHODS.entry("gradcam")
    n = len(METHODS)
    with METHODS.isolated() as reg:
        assert reg is METHODS
        METHODS.remove("gradcam")
        METHODS.add("isolated_cam", lambda ctx: ctx.images[:, 0], family="baseline", relu=True)
        assert "gradcam" not in METHODS and "isolated_cam" in METHODS
    assert METHODS.entry("gradcam") == builtin and "isolated_cam" not in METHODS and len(METHODS) == n
