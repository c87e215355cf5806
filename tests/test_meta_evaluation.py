"""Meta-evaluation (MetaQuantus, Hedstrom et al. TMLR 2023): the IAC/IEC/NR/AR reductions on hand-computed
cases, the perturbed models, the suite keys, and a run of tests/runner_suites/meta.toml with known answers
(a metric that reads neither model nor maps: NR = 1, AR = 0; the model's logit reacts), resume and backends."""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as st

os.environ.setdefault("TQDM_DISABLE", "1")

from benchmark.errors import SuiteError
from benchmark.report import meta as MQ
from benchmark.report.build import write_report
from benchmark.report.card import CARD_COLUMNS
from benchmark.runner import load_suite, parse_suite, plan_run, run_suite, run_unit
from benchmark.runner.execute import perturb_model
from benchmark.store import Store

import runner_fakes

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")

SUITES = Path(__file__).parent / "runner_suites"


# -- the reductions ---------------------------------------------------------------------------------


def test_wilcoxon_p_is_scipys_two_sided_zsplit_and_one_for_equal_scores():
    rng = np.random.default_rng(0)
    q, qh = rng.normal(size=12), rng.normal(size=12)
    qh[3] = q[3]  # a zero difference, split between the signs
    want = st.wilcoxon(q, qh, zero_method="zsplit", alternative="two-sided").pvalue
    assert MQ.wilcoxon_p(q, qh) == pytest.approx(want)
    assert MQ.wilcoxon_p(q, q.copy()) == 1.0
    assert np.isnan(MQ.wilcoxon_p(np.array([]), np.array([])))
    # 8 pairs all shifted the same way: the exact two-sided p is 2 / 2^8
    assert MQ.wilcoxon_p(np.arange(8.0), np.arange(8.0) - 1 - np.arange(8) * 0.1) == pytest.approx(2 / 256)


def test_iec_by_hand():
    q = np.array([[1.0, 5.0], [2.0, 4.0], [3.0, 3.0]])  # 3 methods x 2 images
    same = q + 10.0
    swapped = np.array([[1.0, 5.0], [3.0, 4.0], [2.0, 3.0]])  # image 0: methods 1 and 2 swap ranks
    assert MQ.iec_resilience(q, same) == 1.0
    assert MQ.iec_resilience(q, swapped) == pytest.approx(4 / 6)
    worse = q - np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # 4 of 6 entries strictly worse
    assert MQ.iec_adversary(q, worse, higher_is_better=True) == pytest.approx(4 / 6)
    assert MQ.iec_adversary(q, worse, higher_is_better=False) == 0.0
    assert np.isnan(MQ.iec_resilience(q[:, :0], q[:, :0]))


def test_meta_consistency_known_answers():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(3, 8))
    k = 2
    alln = np.ones((k, 8), bool)
    # nothing moves: resilient (NR = 1) and not reactive at all (AR = 0)
    m = MQ.meta_consistency(q, np.stack([q] * k), np.stack([q] * k), alln, alln)
    assert (m["IAC_NR"], m["IEC_NR"], m["NR"]) == (1.0, 1.0, 1.0)
    assert (m["IAC_AR"], m["IEC_AR"], m["AR"]) == (0.0, 0.0, 0.0)
    assert m["MC"] == 0.5
    # every score drops by far more than its spread under the disruptive perturbation: the Wilcoxon p of 8
    # one-signed pairs is 2/256, every entry is worse; the minor one keeps the ranking but shifts the scores
    drop = q - 100.0
    m = MQ.meta_consistency(q, np.stack([q + 1e-3] * k), np.stack([drop] * k), alln, alln)
    assert m["IAC_AR"] == pytest.approx(1 - 2 / 256) and m["IEC_AR"] == 1.0
    assert m["IEC_NR"] == 1.0 and m["IAC_NR"] == pytest.approx(2 / 256)
    assert m["AR"] == pytest.approx((1 - 2 / 256 + 1) / 2)
    # the disruptive perturbation is read only on the images whose prediction it changes: none -> NaN
    m = MQ.meta_consistency(q, np.stack([q] * k), np.stack([drop] * k), alln, ~alln)
    assert np.isnan(m["IAC_AR"]) and np.isnan(m["IEC_AR"]) and np.isnan(m["AR"]) and m["NR"] == 1.0
    # lower is better: a drop is an improvement, not a worsening
    m = MQ.meta_consistency(q, np.stack([q] * k), np.stack([drop] * k), alln, alln, higher_is_better=False)
    assert m["IEC_AR"] == 0.0


def test_meta_scores_leave_baselines_out_and_align_images():
    ids = [f"i{j}" for j in range(6)]
    rows, prow = [], []
    for meth, base in (("a", 0.0), ("b", 1.0), ("random", 5.0)):
        for j, i in enumerate(ids):
            rows.append(("m", "d", meth, "x", i, base + j, "ok", "", False))
            for kind, shift in (("minor", 0.0), ("disruptive", -50.0)):
                prow.append(("m", "d", meth, "x", i, kind, 0, base + j + shift, kind == "minor"))
    scores = pd.DataFrame(
        rows, columns=["model", "dataset", "method", "metric", "image_id", "value", "status", "message", "degenerate"]
    )
    pert = pd.DataFrame(
        prow, columns=["model", "dataset", "method", "metric", "image_id", "perturbation", "k", "value", "pred_same"]
    )
    out = MQ.meta_scores(scores, pert.sample(frac=1.0, random_state=0), {"x": True}, baselines=["random"])
    r = out.iloc[0]
    assert (r.IAC_NR, r.IEC_NR, r.IEC_AR) == (1.0, 1.0, 1.0)
    assert r.IAC_AR == pytest.approx(1 - 2 / 64)  # 6 one-signed pairs per method
    assert (r.meta_k, r.meta_kept, r.meta_changed) == (1, 1.0, 1.0)
    assert MQ.meta_scores(scores, pert.iloc[0:0], {"x": True}).empty


# -- perturbed models -------------------------------------------------------------------------------


def test_perturb_model_is_seeded_multiplicative_and_leaves_the_original():
    model = runner_fakes.fake_cnn().model
    before = [p.detach().clone() for p in model.parameters()]
    a, b, c = perturb_model(model, 0.5, 7), perturb_model(model, 0.5, 7), perturb_model(model, 0.5, 8)
    params = (before, model.parameters(), a.parameters(), b.parameters(), c.parameters())
    for p0, p, pa, pb, pc in zip(*params, strict=True):
        assert torch.equal(p0, p)  # the original is untouched
        assert torch.equal(pa, pb) and not torch.equal(pa, pc)
        assert not torch.equal(pa, p0)
    g = torch.Generator().manual_seed(7)
    w0 = before[0]
    assert torch.allclose(next(a.parameters()), w0 * (1 + 0.5 * torch.randn(w0.shape, generator=g)))
    tiny = perturb_model(model, 1e-6, 1)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(tiny(x), model(x), atol=1e-4)


# -- suite keys -------------------------------------------------------------------------------------

BASE = """
name = "t"
device = "cpu"
methods = ["gradcam"]
metrics = ["fake_inside"]
{top}
[[experiments]]
model = "fake_cnn"
dataset = "fake_shapes"
data = {{ n = 2 }}
{exp}
"""


def _suite(top: str = "", exp: str = ""):
    return parse_suite(BASE.format(top=top, exp=exp))


def test_suite_keys_defaults_override_and_hash():
    off = _suite()
    assert not off.meta_evaluation and off.meta_perturbations == 3
    assert (off.meta_minor_std, off.meta_disruptive_std) == (0.001, 2.0)
    on = _suite("meta_evaluation = true\nmeta_perturbations = 2\nmeta_disruptive_std = 1.5")
    assert on.meta_evaluation and on.experiments[0].meta_evaluation and on.meta_perturbations == 2
    assert _suite(exp="meta_evaluation = true").experiments[0].meta_evaluation
    assert not _suite("meta_evaluation = true", "meta_evaluation = false").meta_evaluation
    # off: the meta keys do not enter the hash (existing results keep theirs); on: they do
    assert _suite("meta_perturbations = 7").hash() == off.hash()
    assert on.hash() != off.hash()
    assert on.hash() != _suite("meta_evaluation = true\nmeta_perturbations = 3\nmeta_disruptive_std = 1.5").hash()


@pytest.mark.parametrize(
    "top, exp, msg",
    [
        ("meta_evaluation = 1", "", "true or false"),
        ("", 'meta_evaluation = "yes"', "true or false"),
        ("meta_perturbations = 0", "", "positive integer"),
        ("meta_minor_std = 0", "", "positive number"),
        ("meta_disruptive_std = -1.0", "", "positive number"),
        ("meta_evalution = true", "", "Did you mean 'meta_evaluation'"),
    ],
)
def test_suite_key_errors(top, exp, msg):
    with pytest.raises(SuiteError, match=msg):
        _suite(top, exp)


# -- a run ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def meta_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("meta")
    res = run_suite(load_suite(SUITES / "meta.toml"), out, quiet=True, report=partial(write_report, plots=False))
    return out, res


def _card(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "metric_card.csv").set_index(["model", "metric"])


def test_run_known_answers(meta_run):
    out, res = meta_run
    card = _card(out)
    px = card.loc[("fake_cnn", "fake_pixel_mean")]
    assert (px.IAC_NR, px.IEC_NR, px.NR) == (1.0, 1.0, 1.0)
    assert (px.IAC_AR, px.IEC_AR, px.AR) == (0.0, 0.0, 0.0)
    lg = card.loc[("fake_cnn", "fake_logit")]
    assert lg.AR > 0.9 and lg.AR > px.AR  # the model's logit reacts to the disruptive noise
    assert lg.IEC_NR == 1.0  # one logit for every method: the ranking cannot change
    assert (lg.meta_k, lg.meta_kept, lg.meta_changed) == (2, 1.0, 1.0)
    for c in ("IAC_NR", "IAC_AR", "IEC_NR", "IEC_AR", "NR", "AR", "MC"):
        v = card.xs("fake_cnn")[c]
        assert v.notna().all() and ((v >= 0) & (v <= 1)).all()
    # the experiment that turns it off has no perturbed rows and NaN meta columns
    assert card.loc[("fake_cnn_off", "fake_pixel_mean")][["NR", "AR"]].isna().all()
    pert = Store(out, res.plan.hash).load_perturbed()
    assert set(pert["model"]) == {"fake_cnn"} and set(pert["perturbation"]) == {"minor", "disruptive"}
    assert set(pert["metric"]) == {"fake_pixel_mean", "fake_logit", "fake_drop", "fake_noise", "fake_inside"}
    # fake_noise re-explains under gradient noise through the perturbed model: its rows exist for every method
    assert set(pert[pert["metric"] == "fake_noise"]["method"]) == {"gradcam", "layercam", "eigencam", "random"}
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<th>NR</th><th>AR</th>" in html and "Meta-evaluation" in html


def test_meta_rows_do_not_change_the_unperturbed_scores(meta_run):
    """The default path is untouched: a unit with meta-evaluation off has no perturbed table and the same
    score rows as with it on."""
    out, res = meta_run
    suite = load_suite(SUITES / "meta.toml")
    text = suite.source.replace("meta_evaluation = true", "meta_evaluation = false")
    off = parse_suite(text, path=str(SUITES / "meta.toml"))
    plan_on, plan_off = plan_run(suite), plan_run(off)
    assert plan_on.hash != plan_off.hash
    r_off = run_unit(off, plan_off.units[1])
    assert r_off.perturbed is None
    r_on = Store(out, res.plan.hash).load_scores()
    want = r_on[r_on["image_id"].isin(r_off.scores["image_id"]) & (r_on["model"] == "fake_cnn")]
    got = r_off.scores.sort_values(["method", "metric", "image_id"]).reset_index(drop=True)
    want = want.sort_values(["method", "metric", "image_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        got[["method", "metric", "image_id", "value", "status"]],
        want[["method", "metric", "image_id", "value", "status"]],
    )


def test_card_without_meta_keeps_its_columns(tmp_path):
    res = run_suite(
        parse_suite(BASE.format(top="", exp=""), path=str(SUITES / "x.toml")),
        tmp_path,
        quiet=True,
        report=partial(write_report, plots=False),
    )
    assert list(pd.read_csv(tmp_path / "metric_card.csv").columns) == CARD_COLUMNS
    assert not (tmp_path / "perturbed").exists() and Store(tmp_path, res.plan.hash).load_perturbed().empty


def test_resume_and_loky_give_the_same_meta_rows(meta_run, tmp_path):
    out, res = meta_run
    ref = Store(out, res.plan.hash).load_perturbed()
    card = pd.read_csv(out / "metric_card.csv")
    # resume: one unit lost (part and its perturbed table), the rerun recomputes it only
    copy = tmp_path / "resume"
    shutil.copytree(out, copy)
    key = res.plan.units[1].key
    store = Store(copy, res.plan.hash)
    store.part_path(key).unlink()
    store.perturbed_path(key).unlink()
    again = run_suite(load_suite(SUITES / "meta.toml"), copy, quiet=True, report=partial(write_report, plots=False))
    assert again.ran == [key]
    pd.testing.assert_frame_equal(Store(copy, res.plan.hash).load_perturbed(), ref)
    pd.testing.assert_frame_equal(pd.read_csv(copy / "metric_card.csv"), card)
    # another backend: workers build the same perturbed models (seeded per experiment, drawn on the CPU)
    lk = tmp_path / "loky"
    run_suite(load_suite(SUITES / "meta.toml"), lk, quiet=True, report=False, backend="loky", workers=2)
    pd.testing.assert_frame_equal(Store(lk, res.plan.hash).load_perturbed(), ref)
