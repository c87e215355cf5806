"""Curves stored as Parquet tables (``OUT/curves/``): read back exactly as the earlier layout (JSON in the
part's metadata) was, combined over units; directories of the earlier layout still resume and report; the
score rows built from numpy chunks are the rows the earlier list-built table had, bit for bit."""

from __future__ import annotations

import io
import shutil
import tempfile
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark.errors import CambenchError
from benchmark.report.build import write_report
from benchmark.report.plots import curve_plots
from benchmark.runner import load_suite, run_suite
from benchmark.runner.unit import ScoreRows, curves_frame
from benchmark.schema import CURVE_COLUMNS, SCORE_COLUMNS, UnitResult
from benchmark.store import CURVE_SCHEMA, Store, read_meta, write_parquet

import runner_fakes

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the earlier layout, as the previous Store.write_unit wrote it --------------------------------------


def write_old_part(store: Store, result: UnitResult) -> Path:
    """Commit ``result`` as the previous version did: the curves as JSON in the part's metadata, no file."""
    meta = {
        "suite_hash": store.hash,
        "unit": result.key,
        "curves": result.curves.to_dict(orient="list"),
        "timings": result.timings.to_dict(orient="list"),
        "info": result.info,
    }
    path = store.part_path(result.key)
    write_parquet(path, result.scores, meta)
    return path


def to_old_layout(store: Store) -> int:
    """Rewrite every part of ``store`` as the previous version wrote it (curves back into the metadata,
    the curves files removed). Returns the number of parts rewritten."""
    parts = sorted(store.parts.glob(f"*__{store.hash}.parquet"))
    for part in parts:
        meta = read_meta(part)
        key = meta["unit"]
        path = store.curves_path(key)
        curves = pd.read_parquet(path) if path.is_file() else pd.DataFrame(columns=CURVE_COLUMNS)
        meta = {
            "suite_hash": meta["suite_hash"],
            "unit": key,
            "curves": curves.to_dict(orient="list"),
            "timings": meta["timings"],
            "info": meta["info"],
        }
        write_parquet(part, pq.read_table(part).to_pandas(), meta)
    if store.curves.is_dir():
        shutil.rmtree(store.curves)
    return len(parts)


def _unit(key: str, curves: pd.DataFrame, n_images: int = 1) -> UnitResult:
    scores = pd.DataFrame(
        {
            "model": ["m"],
            "dataset": ["d"],
            "method": ["gradcam"],
            "metric": ["x"],
            "image_id": [f"{key}-i0"],
            "value": [1.0],
            "status": ["ok"],
            "message": [""],
            "degenerate": [False],
        }
    )
    timings = pd.DataFrame(
        {"unit": [key], "model": ["m"], "dataset": ["d"], "stage": ["total"], "name": ["unit"], "seconds": [0.1]}
    )
    return UnitResult(key, scores, curves, timings, info={"n_images": n_images})


finite = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def unit_curves(draw) -> list[tuple[dict, int]]:
    """1-4 units of one experiment: per unit, the summed curves of some (metric, method) pairs and the
    number of images, as the runner accumulates them (``curve_sum``); a pair keeps its step count."""
    steps = {
        ("deletion", "gradcam"): draw(st.integers(1, 6)),
        ("deletion", "random"): draw(st.integers(1, 6)),
        ("insertion", "gradcam"): draw(st.integers(1, 6)),
    }
    units = []
    for _ in range(draw(st.integers(1, 4))):
        k = draw(st.integers(1, 9))
        pairs = draw(st.lists(st.sampled_from(sorted(steps)), min_size=0, max_size=3, unique=True))
        sums = {p: (np.array(draw(st.lists(finite, min_size=steps[p], max_size=steps[p]))), k) for p in pairs}
        units.append((sums, k))
    return units


@settings(max_examples=25, deadline=None)
@given(units=unit_curves(), old_first=st.booleans())
def test_curves_round_trip_equals_the_json_layout(units, old_first):
    """Units written with curves files read back exactly as the same units written the earlier way (JSON
    in the metadata), alone and mixed in one directory; the combination is the image-weighted mean."""
    exp = SimpleNamespace(label="m", dataset="d")
    results = [
        _unit(f"00-m-d-{i:06d}-{i + 1:06d}", curves_frame(exp.label, exp.dataset, sums), k)
        for i, (sums, k) in enumerate(units)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        new, old, mixed = (Store(Path(tmp) / name, "h") for name in ("new", "old", "mixed"))
        for s in (new, old, mixed):
            s.prepare()
        for i, r in enumerate(results):
            new.write_unit(r)
            write_old_part(old, r)
            if (i % 2 == 0) == old_first:
                write_old_part(mixed, r)
            else:
                mixed.write_unit(r)
        got = new.load_curves()
        pd.testing.assert_frame_equal(got, old.load_curves(), check_exact=True)
        pd.testing.assert_frame_equal(mixed.load_curves(), old.load_curves(), check_exact=True)
        for r in results:  # a unit with curves has its typed file; one without has none
            path = new.curves_path(r.key)
            assert path.is_file() == (len(r.curves) > 0)
            if path.is_file():
                assert pq.read_schema(path).remove_metadata() == CURVE_SCHEMA
    # known answer: per (metric, method, step) the mean over all images of the units that have the pair
    assert list(got.columns) == CURVE_COLUMNS
    for row in got.itertuples():
        per_unit = [
            (sums[(row.metric, row.method)][0][row.step], k) for sums, k in units if (row.metric, row.method) in sums
        ]
        n = sum(k for _, k in per_unit)
        assert row.n == n
        want = sum(float(s / k) * k for s, k in per_unit) / n  # unit means, weighted by their image counts
        scale = sum(abs(s) for s, _ in per_unit) / n  # rounding of a sum that cancels is relative to this
        assert row.value == pytest.approx(want, rel=1e-9, abs=1e-12 * scale + 1e-300)


def test_curves_files_commit_with_their_part_and_stale_ones_are_not_read(tmp_path):
    exp = SimpleNamespace(label="m", dataset="d")
    with_curves = curves_frame(exp.label, exp.dataset, {("deletion", "gradcam"): (np.array([4.0, 2.0, 1.0]), 2)})
    store = Store(tmp_path, "h")
    store.prepare()
    store.write_unit(_unit("u1", with_curves, 2))
    assert store.curves_path("u1").is_file()
    assert store.load_curves()["value"].tolist() == [2.0, 1.0, 0.5]
    # a rerun of that unit without curves removes its file
    store.write_unit(_unit("u1", with_curves.iloc[:0], 2))
    assert not store.curves_path("u1").exists() and store.load_curves().empty
    assert list(store.load_curves().columns) == CURVE_COLUMNS
    # a curves file whose part was never committed (killed between the two writes) is not read ...
    write_parquet(store.curves_path("u2"), with_curves, schema=CURVE_SCHEMA)
    (store.curves / ".u3__h.parquet.abc.tmp").write_bytes(b"partial")
    assert store.done() == {"u1"} and store.load_curves().empty
    # ... its temporary leftovers are cleared by the next run, and the rerun of the unit replaces the file
    store.prepare()
    assert sorted(p.name for p in store.curves.iterdir()) == ["u2__h.parquet"]
    twice = curves_frame(exp.label, exp.dataset, {("deletion", "gradcam"): (np.array([8.0, 4.0, 2.0]), 2)})
    store.write_unit(_unit("u2", twice, 2))
    assert store.load_curves()["value"].tolist() == [4.0, 2.0, 1.0]
    store.prepare(fresh=True)
    assert not store.curves.exists()


def test_a_part_whose_curves_file_is_missing_is_an_error_that_says_how_to_fix_it(tmp_path):
    exp = SimpleNamespace(label="m", dataset="d")
    store = Store(tmp_path, "h")
    store.prepare()
    store.write_unit(_unit("u1", curves_frame(exp.label, exp.dataset, {("deletion", "gradcam"): (np.ones(3), 1)})))
    store.curves_path("u1").unlink()
    with pytest.raises(CambenchError, match=r"3 curve rows.*missing.*--fresh"):
        store.load_curves()


def test_an_out_dir_whose_curves_folder_is_a_file_is_refused_before_any_work(tmp_path):
    from benchmark.outdir import OutputDirError, check_out_dir

    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "curves").write_text("x")
    with pytest.raises(OutputDirError, match="curves is a file, but cambench keeps its curves there"):
        check_out_dir(tmp_path / "o")


def test_a_directory_of_the_earlier_layout_resumes_and_reports_the_same_curves(tmp_path):
    """Half a run written the earlier way (curves in the parts' metadata) is resumed by this version: the
    finished units are reused, the report's curves and scores equal an uninterrupted run's, and the curve
    plots are drawn."""
    suite = load_suite(runner_fakes.SUITES / "tiny.toml")
    out = tmp_path / "old"
    first = run_suite(suite, out, quiet=True, report=False, limit=2)
    store = Store(out, first.plan.hash)
    assert to_old_layout(store) == len(first.ran) == 2
    assert all("curves" in read_meta(p) for p in store.parts.iterdir()) and not store.curves.exists()
    assert len(store.load_curves()) > 0  # the earlier layout alone reads

    second = run_suite(suite, out, quiet=True, report=partial(write_report, plots=False))
    assert sorted(second.reused) == sorted(first.ran) and len(second.ran) == len(second.plan.units) - 2
    old = [p for p in store.parts.iterdir() if "curves" in read_meta(p)]
    assert len(old) == 2 and len(list(store.curves.iterdir())) == len(second.ran)

    clean = runner_fakes.run_cached(tmp_path, "tiny")  # an uninterrupted run, every part in the new layout
    pd.testing.assert_frame_equal(second.report.curves, clean.report.curves, check_exact=True)
    assert (out / "curves.parquet").read_bytes() == (clean.out / "curves.parquet").read_bytes()
    assert (out / "scores.parquet").read_bytes() == (clean.out / "scores.parquet").read_bytes()
    assert (out / "leaderboard.csv").read_text() == (clean.out / "leaderboard.csv").read_text()

    from PIL import Image

    pngs = curve_plots(second.report.curves, tmp_path / "plots")
    assert sorted(p.name for p in pngs) == ["curves-fake_cnn-fake_plain.png", "curves-fake_cnn-fake_shapes.png"]
    assert all(np.asarray(Image.open(p).convert("L")).std() > 10 for p in pngs)  # not blank


# -- score rows: numpy chunks, the same table as the earlier lists ------------------------------------


def _list_frame(model: str, dataset: str, calls: list[tuple]) -> pd.DataFrame:
    """The score table as the previous runner built it: Python lists per column, then a DataFrame."""
    cols: dict[str, list] = {c: [] for c in SCORE_COLUMNS}
    for method, metric, ids, values, status, message, degenerate in calls:
        n = len(ids)
        cols["model"] += [model] * n
        cols["dataset"] += [dataset] * n
        cols["method"] += [method] * n
        cols["metric"] += [metric] * n
        cols["image_id"] += list(ids)
        cols["value"] += list(values)
        cols["status"] += list(status) if isinstance(status, (list, np.ndarray)) else [status] * n
        cols["message"] += [message] * n
        cols["degenerate"] += list(degenerate) if isinstance(degenerate, (list, np.ndarray)) else [degenerate] * n
    scores = pd.DataFrame(cols, columns=SCORE_COLUMNS)
    scores["value"] = scores["value"].astype("float64")
    scores["degenerate"] = scores["degenerate"].astype(bool)
    return scores


@st.composite
def score_calls(draw) -> list[tuple]:
    """Calls of the runner's ``add``: metric values (any float64 bits, NaN and inf included) with their
    statuses, or error rows (NaN for all); per-image or shared ``degenerate``."""
    calls = []
    for _ in range(draw(st.integers(0, 6))):
        n = draw(st.integers(1, 5))
        ids = [f"img{draw(st.integers(0, 99)):03d}" for _ in range(n)]
        method = draw(st.sampled_from(["gradcam", "random", "(data)"]))
        metric = draw(st.sampled_from(["deletion", "pointing_game", "(load)"]))
        degenerate = draw(st.one_of(st.booleans(), st.lists(st.booleans(), min_size=n, max_size=n).map(np.array)))
        if draw(st.booleans()):
            bits = draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n))
            v = np.array(bits, dtype=np.uint64).view(np.float64)
            status = np.where(np.isfinite(v), "ok", "undefined")
            calls.append((method, metric, ids, v, status, "", degenerate))
        else:
            calls.append(
                (method, metric, ids, np.nan, "error", draw(st.sampled_from(["boom", "méthode: ✗"])), degenerate)
            )
    return calls


def _as_lists(call: tuple) -> tuple:
    """The previous runner's arguments for the same rows: values and statuses as lists, NaN repeated."""
    method, metric, ids, values, status, message, degenerate = call
    n = len(ids)
    if isinstance(values, np.ndarray):
        return method, metric, ids, values.tolist(), status.tolist(), message, degenerate
    return method, metric, ids, [values] * n, status, message, degenerate


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf, compression="zstd")
    return buf.getvalue()


@settings(max_examples=60, deadline=None)
@given(calls=score_calls())
def test_score_rows_equal_the_list_built_table_bit_for_bit(calls):
    rows = ScoreRows("fake_cnn", "fake_shapes")
    for c in calls:
        rows.add(*c)
    got = rows.frame()
    want = _list_frame("fake_cnn", "fake_shapes", [_as_lists(c) for c in calls])
    assert len(rows) == len(want)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert np.array_equal(got["value"].to_numpy().view(np.uint64), want["value"].to_numpy().view(np.uint64))
    assert _parquet_bytes(got) == _parquet_bytes(want)  # the part's bytes (and so scores.parquet) unchanged


def test_score_rows_refuse_a_value_count_that_is_not_one_per_image():
    rows = ScoreRows("m", "d")
    with pytest.raises(CambenchError, match="2 values for 3 images"):
        rows.add("gradcam", "deletion", ["a", "b", "c"], np.zeros(2), "ok", "", False)
