"""Name prefixes of the generic registry (timm style ``prefix/Rest``): lazy, cached, listed on request."""

from __future__ import annotations

import pytest

from benchmark.errors import CambenchError, UnknownNameError
from benchmark.registry import Registry


def _registry(calls: list[str]) -> Registry:
    reg: Registry = Registry("widget")
    reg.add("plain", object(), family="a")

    def resolve(rest: str):
        calls.append(rest)
        if rest == "Broken":
            raise CambenchError("widget 'lib/Broken' needs `pip install lib`")
        if rest not in ("Alpha", "Beta"):
            raise KeyError(rest)
        return (lambda: rest), {"family": "b" if rest == "Beta" else "a"}

    reg.add_prefix("lib", resolve, lambda: ["Alpha", "Beta", "Broken"])
    return reg


def test_prefixed_lookup_is_lazy_cached_and_carries_meta() -> None:
    calls: list[str] = []
    reg = _registry(calls)
    assert calls == []  # nothing resolved at registration
    entry = reg.entry("lib/Alpha")
    assert entry.name == "lib/Alpha" and entry.obj() == "Alpha" and entry.meta == {"prefix": "lib", "family": "a"}
    assert reg.get("lib/Alpha") is entry.obj and reg.entry("lib/Alpha") is entry
    assert calls == ["Alpha"]  # cached
    assert "lib/Beta" in reg and "lib/Nope" not in reg and "other/Alpha" not in reg and "plain" in reg
    assert "lib/Broken" in reg  # known to the prefix, but failing: lookups raise its error
    with pytest.raises(CambenchError, match="pip install lib"):
        reg.get("lib/Broken")


def test_list_shows_prefixed_names_only_when_asked() -> None:
    reg = _registry([])
    assert reg.list() == ["plain"] and len(reg) == 1 and list(reg) == ["plain"]
    reg.get("lib/Alpha")
    assert reg.list() == ["plain"]  # a lookup does not change what "all" means
    assert reg.list(prefixed=True) == ["lib/Alpha", "lib/Beta", "lib/Broken", "plain"]
    assert reg.list("lib/*") == ["lib/Alpha", "lib/Beta", "lib/Broken"]
    assert reg.list("lib/B*") == ["lib/Beta", "lib/Broken"]
    assert reg.list("lib/A*", family="a") == ["lib/Alpha"]
    assert reg.list(prefixed=True, family="b") == ["lib/Beta"]  # lib/Broken cannot be resolved: filtered out
    assert reg.list(family="a") == ["plain"]
    assert [e.name for e in reg.entries()] == ["plain"]


def test_unknown_prefixed_name_suggests_within_the_prefix() -> None:
    reg = _registry([])
    with pytest.raises(UnknownNameError, match=r"Did you mean 'lib/Alpha'.*Valid lib/ widgets: lib/Alpha, lib/Beta"):
        reg.entry("lib/Alpah")
    with pytest.raises(UnknownNameError, match="Unknown widget 'nolib/Alpha'"):
        reg.entry("nolib/Alpha")
    with pytest.raises(UnknownNameError):
        reg.entry("lib/")


def test_registered_names_win_and_remove_forgets_the_cache() -> None:
    calls: list[str] = []
    reg = _registry(calls)
    own = object()
    reg.add("lib/Alpha", own)
    assert reg.get("lib/Alpha") is own and calls == []
    reg.remove("lib/Alpha")
    assert reg.get("lib/Alpha")() == "Alpha"
    reg.remove("lib/Alpha")
    reg.get("lib/Alpha")
    assert calls == ["Alpha", "Alpha"]
    with pytest.raises(CambenchError, match="prefix"):
        reg.add_prefix("a/b", lambda r: (None, {}))


def test_prefix_without_lister_resolves_but_lists_nothing() -> None:
    reg: Registry = Registry("model")
    reg.add_prefix("hub", lambda rest: (rest.upper(), {}))
    assert reg.get("hub/resnet") == "RESNET" and reg.list(prefixed=True) == []
