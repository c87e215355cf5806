"""Plugin methods are checked on every input kind the suite runs them on (2-D, 3-D, multi-label), and the
README's and CONTRIBUTING's example methods work on every quick-suite experiment (issue 29)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from benchmark import cli, plugins
from benchmark.methods import explain_context, run_method
from benchmark.methods.contract import _check_model, check_method
from benchmark.plugins import ContractError, load_plugins
from benchmark.runner import load_suite
from benchmark.runner.preflight import check_suite_methods, experiment_kinds

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "topk_gradcam": ROOT / "examples" / "my_cam.py",
    "posgrad_cam": ROOT / "examples" / "contrib" / "my_method.py",
}

#: the README's plugin before issue 29: Grad-CAM weights over (-2, -1) and a 2-D einsum (fails on volumes)
FLAT_ONLY = """
import torch
from benchmark.methods import register_method

@register_method("flat_gradcam", family="gradient")
def flat_gradcam(ctx, k: int = 8):
    w = ctx.capture.gradients.mean(dim=(-2, -1))
    return torch.einsum("bc,bchw->bhw", w, ctx.capture.activations)
"""


@pytest.fixture(autouse=True)
def clean_registries():
    with plugins.isolated():
        yield


def test_quick_suite_feeds_2d_3d_and_multilabel_inputs():
    kinds = dict(experiment_kinds(load_suite("quick")))
    assert kinds["volume_cnn on volumes"] == {"3d"}
    assert {"2d", "labels"} <= kinds["shapes_multilabel_cnn on shapes_multilabel"]
    assert set().union(*kinds.values()) == {"2d", "3d", "labels"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_pass_the_contract_on_every_quick_input_kind(name):
    load_plugins([str(EXAMPLES[name])], entry_points=False)
    checked = check_suite_methods(load_suite("quick"), [name])
    assert {"2d", "3d"} <= set(checked[name])  # the kinds the quick suite runs it on, and ...
    assert "volume_cnn on volumes" in checked[name]["3d"]
    for kind in ("2d", "3d", "labels"):
        assert check_method(name, kind=kind) == []  # ... it passes each


def test_topk_gradcam_with_every_channel_is_gradcam_in_3d():
    """Known answer: keeping all k = C channels, Top-k Grad-CAM is Grad-CAM (the built-in, 3-D aware)."""
    load_plugins([str(EXAMPLES["topk_gradcam"])], entry_points=False)
    model, layer, _ = _check_model(False, 0, "3d")
    x = torch.randn(3, 3, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    ctx = explain_context(model, layer, x, torch.tensor([0, 1, 2]), forward_batch_size=8, seed=0)
    mine = run_method(ctx, "topk_gradcam", {"k": 8})
    ref = run_method(ctx, "gradcam")
    assert mine.maps.shape == (3, 8, 16, 16)
    torch.testing.assert_close(mine.maps, ref.maps, atol=1e-6, rtol=0)


def test_a_2d_only_plugin_is_refused_before_work_with_the_fix(tmp_path, capsys):
    path = tmp_path / "flat.py"
    path.write_text(textwrap.dedent(FLAT_ONLY))
    load_plugins([str(path)], entry_points=False)  # 2-D: passes the loader's check
    assert check_method("flat_gradcam") == []
    with pytest.raises(ContractError) as err:
        check_suite_methods(load_suite("quick"), ["flat_gradcam"])
    msg = str(err.value)
    assert "'flat_gradcam' fails on 3d inputs" in msg and "volume_cnn on volumes" in msg
    assert "einsum" in msg and "tuple(range(2, A.ndim))" in msg  # the error and the fix


def test_cli_refuses_a_2d_only_plugin_on_a_volume_suite(tmp_path, capsys):
    path = tmp_path / "flat.py"
    path.write_text(textwrap.dedent(FLAT_ONLY))
    suite = tmp_path / "vol.toml"
    suite.write_text(
        'name = "vol"\nmethods = ["flat_gradcam"]\nmetrics = ["pointing_game"]\n\n[[experiments]]\n'
        'model = "volume_cnn"\nweights = "default"\ndataset = "volumes"\ndata = { n = 1 }\n'
    )
    out = tmp_path / "o"
    assert cli.main(["run", str(suite), "--plugin", str(path), "--out", str(out), "--quiet", "--no-plots"]) == 2
    assert "fails on 3d inputs" in capsys.readouterr().err
    assert not (out / "parts").exists()  # refused before any unit ran


def test_model_override_swaps_the_model_of_real_data_experiments_only():
    from benchmark.errors import UnknownNameError
    from benchmark.runner import load_registries
    from benchmark.runner.preflight import override_model

    load_registries()
    voc = override_model(load_suite("voc"), "efficientnet_lite0")
    assert {(e.model, e.label, e.weights, e.layer) for e in voc.experiments} == {
        ("efficientnet_lite0", "efficientnet_lite0", "default", None)
    }
    quick = load_suite("quick")
    swapped = override_model(quick, "efficientnet_lite0")
    for before, after in zip(quick.experiments, swapped.experiments, strict=True):
        # generated data keeps its shipped model (its classes are the dataset's own); photos are real
        expect = "efficientnet_lite0" if before.dataset == "photos" else before.model
        assert after.model == expect, before.dataset
    with pytest.raises(UnknownNameError, match="resnet50"):
        override_model(quick, "no_such_model")


def test_list_shows_dataset_layouts_and_method_parameters(capsys):
    assert cli.main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    voc = lines[[i for i, x in enumerate(lines) if x.startswith("voc ")][0] + 1]
    assert voc.startswith("    layout: ") and "JPEGImages" in voc and "Annotations" in voc
    for name in ("imagenet", "coco", "folder", "nifti", "video_folder"):
        row = [i for i, x in enumerate(lines) if x.startswith(f"{name} ")][0]
        assert lines[row + 1].startswith("    layout: ROOT"), name
    assert cli.main(["list", "methods"]) == 0
    rows = {x.split()[0]: x for x in capsys.readouterr().out.splitlines()}
    assert "params: n_samples=" in rows["smoothgradcampp"] and "params: (none)" in rows["cam"]


def test_docs_show_every_loaders_layout():
    from benchmark.data import DATASETS

    doc = (ROOT / "docs" / "datasets.md").read_text(encoding="utf-8")
    layouts = {n: DATASETS.entry(n).meta.get("layout") for n in DATASETS.list()}
    assert sum(bool(v) for v in layouts.values()) >= 6
    for name, layout in layouts.items():
        if layout:
            assert f"| `{name}` | `{layout}` |" in doc, f"docs/datasets.md's layout of {name} is stale"
