"""Incremental runs (issue #29, item 1): adding, editing or removing one method recomputes only that method's
rows; everything else is reused, and the tables equal those of a fresh full run. Fast: 2 units of 2 fake
images (tests/runner_fakes.py), plus one run on the shipped shapes CNN with the perturbation metrics.
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import benchmark.evaluate as E
from benchmark.cli import main
from benchmark.report.build import write_report
from benchmark.runner import parse_suite, run_suite
from benchmark.store import Store, planned_methods

import runner_fakes

pytestmark = pytest.mark.usefixtures("one_thread")

FAKES = Path(runner_fakes.__file__).resolve()
SUITE = """
name = "incremental"
seed = 0
device = "cpu"
batch_size = 2
shard_size = 2
gallery = 1
bootstrap = 20
plugins = [{plugins}]
methods = [{methods}]
metrics = ["fake_inside", "fake_drop"]
{extra}
[[experiments]]
model = "fake_cnn"
dataset = "fake_shapes"
data = {{ n = 4 }}
"""

# a plugin method that also draws from torch's global generator: its maps must not depend on which methods
# ran before it on the batch (evaluate_batch seeds the global generator before each method)
PLUGIN = """
import torch
from benchmark.methods import register_method
from benchmark.methods.gradient import gradcam


@register_method("{name}", family="gradient", paper="tests")
def {name}(ctx, power: float = 1.0):
    cam = gradcam(ctx)
    return cam ** power + 0.05 * torch.rand(cam.shape){tail}
"""

BUILT_IN = ("gradcam", "random")


def _plugin(tmp_path: Path, name: str, tail: str = "") -> Path:
    path = tmp_path / f"{name}_plugin.py"
    path.write_text(PLUGIN.format(name=name, tail=tail))
    return path


def _suite(methods: tuple[str, ...], plugin: Path | None = None, extra: str = ""):
    plugins = [str(FAKES)] + ([str(plugin)] if plugin else [])
    text = SUITE.format(
        plugins=", ".join(f'"{p}"' for p in plugins), methods=", ".join(f'"{m}"' for m in methods), extra=extra
    )
    return parse_suite(text, default_name="incremental")


REPORT = partial(write_report, plots=False, html=False)


def _run(suite, out: Path, lines: list[str] | None = None, **kw):
    return run_suite(suite, out, quiet=True, report=REPORT, log=(lines.append if lines is not None else None), **kw)


@pytest.fixture
def explained(monkeypatch):
    """The method names evaluate_batch explains, in order (every call, every batch)."""
    calls: list[str] = []
    real = E.run_method

    def spy(ectx, name, *a, **kw):
        calls.append(name)
        return real(ectx, name, *a, **kw)

    monkeypatch.setattr(E, "run_method", spy)
    return calls


def _tables(out: Path) -> dict[str, pd.DataFrame]:
    """The report's tables of ``out`` that depend on the scores (not on timings)."""
    names = ("leaderboard.csv", "significance.csv", "pairwise.csv", "failures.csv", "metric_card.csv")
    frames = {n: pd.read_csv(out / n) for n in names}
    frames["scores"] = pd.read_parquet(out / "scores.parquet")
    frames["curves"] = pd.read_parquet(out / "curves.parquet")
    return frames


def _store(out: Path) -> Store:
    run = json.loads((out / "run.json").read_text())
    return Store(out, run["suite_hash"], units=run["units"], methods=planned_methods(run))


def _same_tables(a: Path, b: Path) -> None:
    ta, tb = _tables(a), _tables(b)
    for name in ta:
        pd.testing.assert_frame_equal(ta[name], tb[name], check_exact=True, obj=name)
    ga, gb = _store(a).load_gallery(), _store(b).load_gallery()
    assert len(ga) == len(gb) > 0
    for x, y in zip(ga, gb, strict=True):
        assert sorted(x) == sorted(y)
        for k in x:
            assert np.array_equal(x[k], y[k]), k


def test_adding_a_plugin_method_computes_only_it_and_equals_a_fresh_run(tmp_path, explained):
    plugin = _plugin(tmp_path, "incr_added")
    out = tmp_path / "out"
    first = _run(_suite(BUILT_IN), out)
    assert sorted(first.computed) == sorted(first.ran) and len(first.ran) == 2
    assert set(explained) == set(BUILT_IN)
    explained.clear()
    lines: list[str] = []
    suite = _suite(("gradcam", "incr_added", "random"), plugin)
    added = _run(suite, out, lines)
    assert added.plan.hash == first.plan.hash  # a method is not part of the base hash
    assert added.computed == {k: ("incr_added",) for k in first.ran}
    assert set(explained) == {"incr_added"} and len(explained) == 2  # one batch per unit, nothing else explained
    said = [m for m in lines if "incr_added" in m]
    assert said == ["cambench: method incr_added is new: computing it on 2 unit(s); 2 other method(s) reused."]
    names = sorted(p.name.split("__")[0] for p in (out / "parts").iterdir())  # one extra part per unit
    assert [n for n in names if "~m" not in n] == sorted(first.ran)
    assert sorted(n.split("~m")[0] for n in names if "~m" in n) == sorted(first.ran)
    store = _store(out)
    timings = store.load_timings()  # explain rows per method; the other stages of both runs (what they cost)
    explain = timings[timings["stage"] == "explain"].groupby("unit")["name"].apply(sorted).tolist()
    assert explain == [["gradcam", "incr_added", "random"]] * 2
    assert (timings[timings["stage"] == "total"].groupby("unit").size() == 2).all()
    for meta in store.load_meta():  # map differences only of pairs computed together
        assert set(meta["info"]["map_diffs"]) == {"gradcam|random"}
        assert sorted(meta["parts"].values()) == [["gradcam", "random"], ["incr_added"]]
    fresh = _run(suite, tmp_path / "fresh")
    assert sorted(fresh.computed[k] for k in fresh.ran) == [("gradcam", "incr_added", "random")] * 2
    _same_tables(out, tmp_path / "fresh")
    assert set(pd.read_parquet(out / "scores.parquet")["method"]) == {"gradcam", "incr_added", "random"}
    # nothing left to do: a third run computes nothing
    again = _run(suite, out)
    assert again.ran == [] and again.computed == {}


def test_editing_a_plugin_or_a_method_param_recomputes_only_that_method(tmp_path, explained):
    plugin = _plugin(tmp_path, "incr_edited")
    methods = ("gradcam", "incr_edited", "random")
    out = tmp_path / "out"
    _run(_suite(methods, plugin), out)
    before = pd.read_parquet(out / "scores.parquet")
    explained.clear()
    plugin.write_text(plugin.read_text() + "\n# edited\n")  # the source text changed (the maps did not)
    lines: list[str] = []
    edited = _run(_suite(methods, plugin), out, lines)
    assert set(edited.computed.values()) == {("incr_edited",)} and len(edited.computed) == 2
    assert set(explained) == {"incr_edited"}
    said = [m for m in lines if "incr_edited" in m]
    assert said == [
        f"cambench: method incr_edited changed (plugin source {plugin.resolve()}): computing it on 2 unit(s); "
        "2 other method(s) reused."
    ]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "scores.parquet"), before, check_exact=True)
    # a changed parameter of that method: only its rows are recomputed, and they change
    explained.clear()
    lines.clear()
    suite = _suite(methods, plugin, "[method_params.incr_edited]\npower = 2.0\n")
    param = _run(suite, out, lines)
    assert set(param.computed.values()) == {("incr_edited",)} and set(explained) == {"incr_edited"}
    assert [m for m in lines if "incr_edited" in m][0].startswith("cambench: method incr_edited changed (params)")
    after = pd.read_parquet(out / "scores.parquet")
    mine = before["method"] == "incr_edited"
    pd.testing.assert_frame_equal(after[~mine].reset_index(drop=True), before[~mine].reset_index(drop=True))
    assert not np.array_equal(after[mine]["value"].to_numpy(), before[mine]["value"].to_numpy())
    _run(suite, tmp_path / "fresh")
    _same_tables(out, tmp_path / "fresh")
    assert len(list((out / "parts").glob("*~m*"))) == 2  # one extra part per unit, rewritten by each edit


def test_a_part_whose_methods_are_all_recomputed_later_is_removed(tmp_path, explained):
    one, two = _plugin(tmp_path, "incr_one"), _plugin(tmp_path, "incr_two")
    out = tmp_path / "out"
    suite = parse_suite(
        SUITE.format(plugins=f'"{FAKES}", "{one}", "{two}"', methods='"gradcam", "random"', extra=""),
        default_name="incremental",
    )
    _run(suite, out)
    with_one = SUITE.format(plugins=f'"{FAKES}", "{one}", "{two}"', methods='"gradcam", "incr_one", "random"', extra="")
    _run(parse_suite(with_one, default_name="incremental"), out)
    first = sorted(p.name for p in (out / "parts").glob("*~m*"))
    one.write_text(one.read_text() + "\n# edited\n")  # incr_one edited and incr_two added: computed together
    both = with_one.replace('"incr_one", "random"', '"incr_one", "incr_two", "random"')
    explained.clear()
    res = _run(parse_suite(both, default_name="incremental"), out)
    assert set(res.computed.values()) == {("incr_one", "incr_two")} and set(explained) == {"incr_one", "incr_two"}
    now = sorted(p.name for p in (out / "parts").glob("*~m*"))
    assert len(first) == len(now) == 2 and not set(first) & set(now)  # the {incr_one} parts are gone
    _run(parse_suite(both, default_name="incremental"), tmp_path / "fresh")
    _same_tables(out, tmp_path / "fresh")


def test_removing_a_method_computes_nothing_and_drops_its_rows_and_adding_it_back_reuses_them(tmp_path, explained):
    plugin = _plugin(tmp_path, "incr_removed")
    all3 = ("gradcam", "incr_removed", "random")
    out = tmp_path / "out"
    _run(_suite(all3, plugin), out)
    full = _tables(out)
    explained.clear()
    removed = _run(_suite(("gradcam", "random"), plugin), out)
    assert removed.ran == [] and removed.computed == {} and explained == []
    scores = pd.read_parquet(out / "scores.parquet")
    assert set(scores["method"]) == {"gradcam", "random"}
    assert "incr_removed" not in set(pd.read_csv(out / "leaderboard.csv")["method"])
    assert all("incr_removed" not in list(g["methods"]) for g in _store(out).load_gallery())
    pd.testing.assert_frame_equal(
        scores, full["scores"][full["scores"]["method"] != "incr_removed"].reset_index(drop=True), check_exact=True
    )
    back = _run(_suite(all3, plugin), out)  # its rows are still stored with the same fingerprint
    assert back.ran == [] and explained == []
    pd.testing.assert_frame_equal(pd.read_parquet(out / "scores.parquet"), full["scores"], check_exact=True)


def test_a_changed_metric_param_recomputes_every_method(tmp_path, explained):
    out = tmp_path / "out"
    first = _run(_suite(BUILT_IN), out)
    explained.clear()
    changed = _run(_suite(BUILT_IN, extra="[metric_params.fake_drop]\nsteps = 3\n"), out)
    assert changed.plan.hash != first.plan.hash
    assert changed.computed == {k: BUILT_IN for k in first.ran}
    assert sorted(explained) == sorted(BUILT_IN * 2)


def test_a_corrupt_method_part_recomputes_only_its_methods(tmp_path, explained):
    plugin = _plugin(tmp_path, "incr_corrupt")
    methods = ("gradcam", "incr_corrupt", "random")
    out = tmp_path / "out"
    _run(_suite(BUILT_IN), out)
    _run(_suite(methods, plugin), out)
    ref = _tables(out)
    extra = sorted(p for p in (out / "parts").iterdir() if "~m" in p.name)
    assert len(extra) == 2
    extra[0].write_bytes(extra[0].read_bytes()[:100])  # truncated
    explained.clear()
    lines: list[str] = []
    again = _run(_suite(methods, plugin), out, lines)
    unit = extra[0].name.split("~m")[0]
    assert again.computed == {unit: ("incr_corrupt",)} and explained == ["incr_corrupt"]
    assert (out / "quarantine" / extra[0].name).is_file()
    assert any(f"of unit {unit}" in m and "moved part" in m for m in lines)
    stem = extra[0].name.split("__")[0]
    assert {q.name.split("__")[0] for q in (out / "quarantine").iterdir()} == {stem}  # that part's files only
    for name, frame in _tables(out).items():
        pd.testing.assert_frame_equal(frame, ref[name], check_exact=True, obj=name)


def test_an_interrupted_incremental_run_resumes_with_the_missing_method_only(tmp_path, explained, monkeypatch):
    plugin = _plugin(tmp_path, "incr_interrupted")
    methods = ("gradcam", "incr_interrupted", "random")
    out = tmp_path / "out"
    _run(_suite(BUILT_IN), out)
    real = Store.write_unit
    written: list[str] = []

    def once(self, result, methods=None):
        if written:
            raise KeyboardInterrupt
        written.append(result.key)
        return real(self, result, methods=methods)

    monkeypatch.setattr(Store, "write_unit", once)
    with pytest.raises(KeyboardInterrupt):
        _run(_suite(methods, plugin), out)
    monkeypatch.setattr(Store, "write_unit", real)
    with pytest.raises(Exception, match="units"):  # the report refuses a unit that lacks a method's rows
        write_report(out, plots=False, html=False)
    explained.clear()
    resumed = _run(_suite(methods, plugin), out)
    assert len(written) == 1 and resumed.computed == {k: ("incr_interrupted",) for k in resumed.ran}
    assert resumed.ran and written[0] not in resumed.ran
    _run(_suite(methods, plugin), tmp_path / "fresh")
    _same_tables(out, tmp_path / "fresh")


def test_the_cli_adds_a_plugin_method_incrementally(tmp_path, capsys):
    plugin = tmp_path / "incr_cli.py"  # --plugin methods pass the contract check: deterministic, batch-consistent
    plugin.write_text(PLUGIN.format(name="incr_cli", tail="").replace(" + 0.05 * torch.rand(cam.shape)", ""))
    out = tmp_path / "out"
    suite_file = tmp_path / "suite.toml"
    suite_file.write_text(SUITE.format(plugins=f'"{FAKES}"', methods='"gradcam", "random"', extra=""))
    assert main(["run", str(suite_file), "--out", str(out), "--no-plots"]) == 0
    suite_file.write_text(SUITE.format(plugins=f'"{FAKES}"', methods='"gradcam", "incr_cli", "random"', extra=""))
    capsys.readouterr()
    assert main(["run", str(suite_file), "--out", str(out), "--no-plots", "--plugin", str(plugin)]) == 0
    err = capsys.readouterr().err
    assert err.count("method incr_cli is new: computing it on 2 unit(s); 2 other method(s) reused.") == 1
    assert "recomputed" not in err
    assert set(pd.read_parquet(out / "scores.parquet")["method"]) == {"gradcam", "incr_cli", "random"}
    shutil.rmtree(out)


REAL = """
name = "incremental-real"
seed = 0
device = "cpu"
batch_size = 2
shard_size = 2
forward_batch_size = 5
gallery = 1
bootstrap = 20
methods = [{methods}]
metrics = ["deletion_auc", "insertion_auc", "average_drop", "road_morf", "max_sensitivity", "pointing_game"]

[method_params.smoothgradcampp]
n_samples = 2

[metric_params.deletion_auc]
n_steps = 4

[metric_params.insertion_auc]
n_steps = 4

[metric_params.road_morf]
percentages = [0.4]

[metric_params.max_sensitivity]
n_samples = 2

[[experiments]]
model = "shapes_cnn"
dataset = "shapes"
data = {{ n = 2, split = "test", scene = "clutter" }}
"""
REAL_METHODS = ("gradcam", "gradcampp", "scorecam", "smoothgradcampp", "random")


def _real(methods: tuple[str, ...]):
    return parse_suite(REAL.format(methods=", ".join(f'"{m}"' for m in methods)), default_name="incremental-real")


@pytest.mark.slow  # ~6 s quiet (two runs of Score-CAM and the perturbation metrics)
def test_methods_computed_alone_equal_the_same_methods_computed_with_all_others(tmp_path):
    """The shipped shapes CNN, perturbation metrics whose forwards batch every method's inputs in chunks of
    ``forward_batch_size`` (5: the chunks cut other images and methods in a subset run), re-explaining metrics,
    a noise-seeded method (SmoothGrad-CAM++) and a perturbation method (Score-CAM). The maps are bit-identical
    (each method is explained alone from the shared capture); the metrics' extra forwards see other chunk
    compositions, which moves a model output by an ulp at most (measured here: scores equal bit for bit, one
    mean-curve point by 5.5e-12): equal to the tolerance of docs/reproducibility.md."""
    full = _run(_real(REAL_METHODS), tmp_path / "full")
    assert len(full.ran) == 1
    out = tmp_path / "incr"
    _run(_real(("gradcam", "gradcampp", "random")), out)
    added = _run(_real(REAL_METHODS), out)
    assert added.computed == {full.ran[0]: ("scorecam", "smoothgradcampp")}
    a, b = pd.read_parquet(tmp_path / "full" / "scores.parquet"), pd.read_parquet(out / "scores.parquet")
    assert set(a["metric"]) >= {"deletion_auc", "road_morf", "max_sensitivity"} and (a["status"] == "ok").mean() > 0.9
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6, atol=1e-9)
    ga, gb = _store(tmp_path / "full").load_gallery(), _store(out).load_gallery()
    assert [list(g["methods"]) for g in ga] == [list(g["methods"]) for g in gb] == [list(REAL_METHODS)]
    assert np.array_equal(ga[0]["maps"], gb[0]["maps"])  # the maps: bit for bit
    ca, cb = pd.read_parquet(tmp_path / "full" / "curves.parquet"), pd.read_parquet(out / "curves.parquet")
    pd.testing.assert_frame_equal(ca, cb, check_exact=False, rtol=1e-6, atol=1e-9)


def test_a_new_method_that_fails_everywhere_adds_error_rows_and_keeps_the_others(tmp_path):
    plugin = tmp_path / "incr_fails.py"
    plugin.write_text(
        "from benchmark.methods import register_method\n\n\n"
        '@register_method("incr_fails", family="gradient", paper="tests")\n'
        "def incr_fails(ctx):\n"
        '    raise RuntimeError("broken variant")\n'
    )
    out = tmp_path / "out"
    _run(_suite(BUILT_IN), out)
    before = pd.read_parquet(out / "scores.parquet")
    added = _run(_suite(("gradcam", "incr_fails", "random"), plugin), out)
    assert set(added.computed.values()) == {("incr_fails",)}
    scores = pd.read_parquet(out / "scores.parquet")
    mine = scores[scores["method"] == "incr_fails"]
    assert len(mine) == 8 and set(mine["status"]) == {"error"} and mine["message"].str.contains("broken variant").all()
    rest = scores[scores["method"] != "incr_fails"].reset_index(drop=True)
    pd.testing.assert_frame_equal(rest, before, check_exact=True)
    assert [list(g["methods"]) for g in _store(out).load_gallery()] == [list(BUILT_IN)]  # gallery = 1 image
