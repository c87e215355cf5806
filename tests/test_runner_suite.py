"""Suite files: parsing, validation errors (did-you-mean), hashing, packaged copies, registry checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmark.errors import SuiteError
from benchmark.metrics import METRICS
from benchmark.runner import load_suite, parse_suite, plan_run
from benchmark.runner.suite import list_suites, packaged_suites

import runner_fakes

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
TINY = runner_fakes.SUITES / "tiny.toml"

BASE = f"""
name = "t"
plugins = ["{str(Path(runner_fakes.__file__).resolve())}"]
methods = ["gradcam"]
metrics = ["fake_inside"]
[[experiments]]
model = "fake_cnn"
dataset = "fake_shapes"
data = {{ n = 2 }}
"""


def test_tiny_suite_parses_with_defaults_and_overrides():
    s = load_suite(TINY)
    assert s.name == "tiny" and s.seed == 3 and s.batch_size == 2 and len(s.experiments) == 2
    e0, e1 = s.experiments
    assert e0.methods[0] == "gradcam" and "oracle" in e0.methods
    assert e1.methods == ("gradcam", "random") and e1.target == "predicted"
    assert e0.metric_params == {"fake_drop": {"steps": 4}} == e1.metric_params
    assert e0.method_params["scorecam"] == {"variant": "pgc"}
    assert s.plugins[0].endswith("runner_fakes.py") and Path(s.plugins[0]).is_absolute()


def test_hash_is_stable_and_tracks_what_changes_results():
    a, b = parse_suite(BASE), parse_suite(BASE)
    assert a.hash() == b.hash() and len(a.hash()) == 12
    assert parse_suite(BASE.replace('name = "t"', 'name = "t"\nseed = 1')).hash() != a.hash()
    assert parse_suite(BASE.replace("n = 2", "n = 3")).hash() != a.hash()
    assert a.with_overrides(batch_size=4).hash() != a.hash()
    # the device does not change the hash: a run resumed on another device keeps its parts
    assert a.with_overrides(device="cpu").hash() == a.with_overrides(device="cuda:1").hash()


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda t: t.replace('name = "t"', 'name = "t"\nbatchsize = 4'), "Did you mean 'batch_size'"),
        (
            lambda t: t.replace('dataset = "fake_shapes"', 'dataset = "fake_shapes"\ntarget = 1'),
            "`target` must be the name of a target kind",
        ),
        (
            lambda t: t.replace('dataset = "fake_shapes"', 'dataset = "fake_shapes"\nweigths = "random"'),
            "Did you mean 'weights'",
        ),
        (lambda t: t.split("[[experiments]]")[0], "at least one [[experiments]]"),
        (lambda t: t.replace('name = "t"', 'name = "t"\nbatch_size = 0'), "`batch_size` must be a positive integer"),
        (lambda t: t.replace('name = "t"', 'name = "t"\ndevice = "gpu"'), "auto, cpu, cuda"),
        (lambda t: t.replace('name = "t"', 'name = "t" ='), "invalid TOML"),
        (lambda t: t + '\n[[experiments]]\nmodel = "fake_cnn"\ndataset = "fake_shapes"\n', "distinct `label"),
    ],
)
def test_invalid_files_raise_clear_suite_errors(edit, needle):
    with pytest.raises(SuiteError, match=None) as info:
        parse_suite(edit(BASE))
    assert needle in str(info.value)


def test_unknown_target_kind_is_refused_by_planning_before_model_work():
    """Target kinds live in benchmark.evaluate.TARGET_KINDS (a new kind registers there): the suite file
    parses, planning names the valid kinds."""
    suite = parse_suite(BASE.replace('dataset = "fake_shapes"', 'dataset = "fake_shapes"\ntarget = "top1"'))
    with pytest.raises(SuiteError, match="`target` must be one of") as info:
        plan_run(suite)
    assert "'predicted'" in str(info.value) and "'top1'" in str(info.value)


@pytest.mark.parametrize(
    "old, new, needle",
    [
        ('model = "fake_cnn"', 'model = "fake_cn"', "Did you mean 'fake_cnn'"),
        ('dataset = "fake_shapes"', 'dataset = "fake_shape"', "Did you mean 'fake_shapes'"),
        ('methods = ["gradcam"]', 'methods = ["gradcamm"]', "Did you mean 'gradcam'"),
        ('metrics = ["fake_inside"]', 'metrics = ["fake_insid"]', "Did you mean 'fake_inside'"),
        (
            'metrics = ["fake_inside"]',
            'metrics = ["fake_inside"]\n[metric_params.fake_drop]\nstep = 3',
            "has no parameter 'step'",
        ),
        (
            'metrics = ["fake_inside"]',
            'metrics = ["fake_inside"]\n[method_params.gradcam]\nalpha = 3',
            "has no parameter 'alpha'",
        ),
        ('dataset = "fake_shapes"', 'dataset = "fake_plain"\nmethods = ["oracle"]', "needs ground-truth masks"),
    ],
)
def test_unknown_names_fail_at_plan_time_naming_valid_ones(old, new, needle):
    suite = parse_suite(BASE.replace(old, new))
    with pytest.raises(SuiteError) as info:
        plan_run(suite)
    assert needle in str(info.value)


def test_metric_families_and_all_resolve_against_the_registry():
    suite = parse_suite(BASE.replace('metrics = ["fake_inside"]', 'metrics = ["localization", "fake_drop"]'))
    plan = plan_run(suite)
    assert list(plan.experiments[0].metrics) == METRICS.list(family="localization") + ["fake_drop"]
    all_plain = parse_suite(
        BASE.replace('metrics = ["fake_inside"]', 'metrics = "all"')
        .replace('methods = ["gradcam"]', 'methods = "all"')
        .replace("fake_shapes", "fake_plain")
    )
    p = plan_run(all_plain).experiments[0]
    assert "oracle" not in p.methods and "gradcam" in p.methods  # oracle needs masks
    assert "fake_inside" in p.skipped and "masks" in p.skipped["fake_inside"]
    assert set(p.metrics) | set(p.skipped) == set(METRICS.list())


def test_environment_variables_and_data_root_fail_fast(monkeypatch, tmp_path):
    text = BASE.replace("data = { n = 2 }", 'data = { n = 2, root = "${CAMBENCH_TEST_ROOT}" }')
    monkeypatch.delenv("CAMBENCH_TEST_ROOT", raising=False)
    with pytest.raises(SuiteError, match=r"CAMBENCH_TEST_ROOT.*--data-root"):
        plan_run(parse_suite(text))
    with pytest.raises(SuiteError, match="does not exist"):
        plan_run(parse_suite(text).with_overrides(data_root=str(tmp_path / "nope")))
    monkeypatch.setenv("CAMBENCH_TEST_ROOT", str(tmp_path))
    assert parse_suite(text).experiments[0].data["root"] == str(tmp_path)


def test_suite_lookup_by_name_and_packaged_copies_are_identical(monkeypatch):
    monkeypatch.chdir(ROOT)
    shipped = sorted(p.stem for p in (ROOT / "suites").glob("*.toml"))
    assert {"quick", "full-synthetic", "imagenet", "voc", "coco"} <= set(shipped)
    packaged = packaged_suites()
    for name in shipped:
        assert packaged.get(name) == (ROOT / "suites" / f"{name}.toml").read_text(), (
            f"benchmark/suites/{name}.toml differs from suites/{name}.toml: copy suites/ into benchmark/suites/"
        )
        assert load_suite(name).name == name
    assert set(list_suites()) >= set(shipped)
    with pytest.raises(SuiteError, match="Did you mean 'quick'"):
        load_suite("quik")


def test_packaged_quick_suite_loads_from_anywhere(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CAMBENCH_SUITES", raising=False)
    s = load_suite("quick")
    assert s.path == "benchmark/suites/quick.toml"
    assert [(e.model, e.dataset) for e in s.experiments] == [
        ("shapes_cnn", "shapes"),
        ("shapes_deep_cnn", "shapes"),
        ("shapes_shortcut_cnn", "shapes_shortcut"),
        ("efficientnet_lite0", "composites"),
        ("volume_cnn", "volumes"),
        ("shapes_multilabel_cnn", "shapes_multilabel"),
        ("shapes_vit", "shapes"),
    ]
    assert s.experiments[0].methods == "all" and s.experiments[0].metrics == "all"
