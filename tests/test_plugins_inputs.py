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
    ctx = explain_context(model, layer, x, torch.tensor([0, 1, 2]), batch_size=8, seed=0)
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
