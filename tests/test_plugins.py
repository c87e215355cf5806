"""Plugins (files, modules, entry points) and the method contract check, for built-ins and broken plugins."""

from __future__ import annotations

import re
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmark import methods, plugins
from benchmark.errors import CambenchError, UnknownNameError
from benchmark.methods import METHODS
from benchmark.metrics import METRICS
from benchmark.plugins import ContractError, PluginError, check_method, check_methods, load_plugins

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_cam.py"


@pytest.fixture(autouse=True)
def clean_registries():
    """Plugins register into the global registries: restore them (and the loaded plugins) after each test."""
    with plugins.isolated():
        yield


def _plugin(tmp_path: Path, body: str, name: str = "my_plugin.py") -> str:
    path = tmp_path / name
    header = "import torch\nfrom benchmark.methods import register_method\n"
    path.write_text(header + textwrap.dedent(body))
    return str(path)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)
    ).eval()


# -- the example plugin ---------------------------------------------------------------------------------
def test_example_plugin_loads_runs_and_passes_the_contract() -> None:
    (plugin,) = load_plugins([str(EXAMPLE)], entry_points=False)  # check=True: contract run on load
    assert plugin.name == "my_cam.py" and plugin.methods == ["topk_gradcam"] and plugin.metrics == []
    entry = METHODS.entry("topk_gradcam")
    assert entry.source == "my_cam.py" and entry.family == "gradient" and entry.defaults == {"k": 8}
    assert check_method("topk_gradcam") == []
    model, x = _net(), torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = methods.explain(
        model, "1", x, [0, 1, 2], ["topk_gradcam", "gradcam"], params={"topk_gradcam": {"k": 6}}, details=True
    )
    torch.testing.assert_close(out["topk_gradcam"].raw, out["gradcam"].raw)  # k = all channels: Grad-CAM
    top1 = methods.get("topk_gradcam", k=1)(model, "1", x, [0, 1, 2])
    assert top1.shape == (3, 16, 16) and not torch.allclose(top1, out["gradcam"].maps)
    assert load_plugins([str(EXAMPLE)], entry_points=False)[0] is plugin  # loading twice is a no-op


# -- the contract on every built-in ------------------------------------------------------------------------
def test_every_builtin_method_passes_the_contract() -> None:
    # Built-ins only: other test modules load fake plugins (some broken on purpose) into this process.
    builtins = [n for n in METHODS.list() if METHODS.get(n).__module__.startswith("benchmark.")]
    report = check_methods(builtins, raise_on_error=False)
    assert set(report) == set(builtins) and len(report) >= 23
    assert all(p == [] for p in report.values()), {n: p for n, p in report.items() if p}


def test_check_methods_with_params_and_unknown_names() -> None:
    assert check_methods(["sscam", "fullgrad"], params={"sscam": {"n_samples": 2}, "fullgrad": {"eps": 0.0}}) == {
        "sscam": [],
        "fullgrad": [],
    }
    with pytest.raises(UnknownNameError, match="Did you mean 'gradcam'"):
        check_methods(["gradcma"])
    with pytest.raises(TypeError, match="no parameter"):
        check_method("sscam", {"nsamples": 2})


# -- broken plugins fail fast, naming the plugin and the problem ------------------------------------------
BROKEN = {
    "wrong_shape": ("return ctx.capture.activations", r"shape \(4, 8, 16, 16\).*expected a raw map Tensor\[B,h,w\]"),
    "nan": (
        "m = ctx.capture.activations.sum(1).clone(); m[:, 0, 0] = float('nan'); return m",
        r"NaN or inf values in 4 of 4 maps",
    ),
    "too_big": (
        "return torch.arange(64 * 64.).view(1, 64, 64).repeat(ctx.images.shape[0], 1, 1)",
        r"spatial size \(64, 64\): out of range",
    ),
    "int_dtype": ("return (ctx.capture.activations.sum(1) * 100).long()", r"dtype torch.int64; expected a floating"),
    "hook_leak": (
        "ctx.layer.register_forward_hook(lambda *a: None); return ctx.capture.activations.sum(1)",
        r"left hooks on the model \(\{'features': \d+\}\)",
    ),
    "unseeded": ("return torch.rand(ctx.images.shape[0], 5, 5)", r"is not deterministic"),
    "batch_mixing": (
        "m = ctx.capture.activations.sum(1); return m + m.mean(0, keepdim=True).flip(-1)",
        r"is not batch-consistent",
    ),
    "raises": ("raise ValueError('boom')", r"raised ValueError: boom"),
    "weights": (
        "ctx.model.fc.bias.data += 1; return ctx.capture.activations.sum(1)",
        r"modified the model's parameters or buffers: fc.bias",
    ),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_method_plugins_fail_early_with_clear_messages(tmp_path, kind: str) -> None:
    body, pattern = BROKEN[kind]
    spec = _plugin(
        tmp_path,
        f"""
        @register_method("broken_{kind}", family="gradient")
        def broken(ctx):
            {body}
    """,
        name=f"broken_{kind}.py",
    )
    with pytest.raises(ContractError) as info:
        load_plugins([spec], entry_points=False)
    msg = str(info.value)
    assert f"method 'broken_{kind}' (plugin 'broken_{kind}.py')" in msg, msg
    assert __import__("re").search(pattern, msg), msg
    assert f"broken_{kind}" not in METHODS  # rolled back: a fixed version can be loaded in this process
    assert isinstance(info.value, PluginError) and isinstance(info.value, CambenchError)


def test_problems_are_returned_without_raising(tmp_path) -> None:
    load_plugins(
        [
            _plugin(
                tmp_path,
                """
        @register_method("unseeded", family="baseline", needs_gradients=False)
        def unseeded(ctx):
            return torch.rand(ctx.images.shape[0], 4, 4)
    """,
            )
        ],
        entry_points=False,
        check=False,
    )
    report = check_methods(["unseeded", "gradcam"], raise_on_error=False)
    assert report["gradcam"] == [] and any("not deterministic" in p for p in report["unseeded"])


def test_batch_consistent_false_skips_only_that_check(tmp_path) -> None:
    load_plugins(
        [
            _plugin(
                tmp_path,
                """
        @register_method("mixer", family="gradient", batch_consistent=False)
        def mixer(ctx):
            m = ctx.capture.activations.sum(1)
            return m + m.mean(0, keepdim=True).flip(-1)
    """,
            )
        ],
        entry_points=False,
    )
    assert check_method("mixer") == []


def test_name_clash_names_both_sides(tmp_path) -> None:
    spec = _plugin(
        tmp_path,
        """
        @register_method("fresh_one", family="gradient")
        def fresh(ctx):
            return ctx.capture.activations.sum(1)

        @register_method("gradcam", family="gradient")
        def mine(ctx):
            return ctx.capture.activations.sum(1)
    """,
        name="clash.py",
    )
    with pytest.raises(
        PluginError,
        match=r"Plugin 'clash.py' could not be loaded: method 'gradcam' is already "
        r"registered \(by cambench\); clash.py tried to register it again",
    ):
        load_plugins([spec], entry_points=False)
    assert "fresh_one" not in METHODS  # partial registrations are rolled back
    assert METHODS.entry("gradcam").meta.get("source", "cambench") == "cambench"


def test_clash_between_two_plugins(tmp_path) -> None:
    body = """
        @register_method("shared_name", family="gradient")
        def f(ctx):
            return ctx.capture.activations.sum(1)
    """
    load_plugins([_plugin(tmp_path, body, "first.py")], entry_points=False)
    with pytest.raises(PluginError, match=r"already registered \(by first.py\); second.py tried"):
        load_plugins([_plugin(tmp_path, body, "second.py")], entry_points=False)


@pytest.mark.parametrize(
    "source,pattern",
    [
        (
            "import not_a_module_xyz_123\n",
            r"Plugin 'bad.py' failed to import .*ModuleNotFoundError: .*not_a_module_xyz_123",
        ),
        ("def broken(:\n", r"Plugin 'bad.py' failed to import .*SyntaxError"),
        ("raise RuntimeError('plugin setup failed')\n", r"RuntimeError: plugin setup failed"),
    ],
)
def test_import_errors_fail_early(tmp_path, source: str, pattern: str) -> None:
    path = tmp_path / "bad.py"
    path.write_text(source)
    with pytest.raises(PluginError, match=pattern):
        load_plugins([str(path)], entry_points=False)
    assert not any(m.startswith("cambench_plugin_bad_") for m in sys.modules)


def test_missing_file_and_bad_spec(tmp_path) -> None:
    with pytest.raises(PluginError, match="does not exist"):
        load_plugins([str(tmp_path / "nope.py")], entry_points=False)
    with pytest.raises(PluginError, match="failed to import .*ModuleNotFoundError"):
        load_plugins(["cb_test_no_such_module"], entry_points=False)
    with pytest.raises(PluginError, match="must be a .py file path or a module name"):
        load_plugins([""], entry_points=False)


def test_module_plugin_registers_methods_and_metrics(tmp_path, monkeypatch) -> None:
    (tmp_path / "cb_test_mod.py").write_text(
        textwrap.dedent("""
        import torch
        from benchmark.methods import register_method
        from benchmark.metrics import register_metric

        @register_method("mod_cam", family="gradient")
        def mod_cam(ctx):
            return (ctx.capture.gradients * ctx.capture.activations).abs().sum(1)

        @register_metric("mod_metric", family="localization", higher_is_better=True)
        def mod_metric(ctx):
            return {m: s.flatten(1).mean(1) for m, s in ctx.saliency.items()}
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    (p,) = load_plugins(["cb_test_mod"], entry_points=False)
    assert (p.name, p.methods, p.metrics) == ("cb_test_mod", ["mod_cam"], ["mod_metric"])
    assert METHODS.entry("mod_cam").source == "cb_test_mod" and METRICS.entry("mod_metric").source == "cb_test_mod"


def test_entry_points_are_loaded_automatically(tmp_path, monkeypatch) -> None:
    (tmp_path / "cb_test_ep.py").write_text(
        textwrap.dedent("""
        from benchmark.methods import register_method

        @register_method("ep_cam", family="gradient")
        def ep_cam(ctx):
            return (ctx.capture.gradients * ctx.capture.activations).sum(1)
    """)
    )
    dist = tmp_path / "cb_test_dist-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cb-test-dist\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[cambench.methods]\nepcam = cb_test_ep\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_plugins([])
    ours = [p for p in loaded if p.methods == ["ep_cam"]]
    assert len(ours) == 1 and ours[0].name == "epcam (cb-test-dist)"
    assert ours[0].origin == "cambench.methods: epcam = cb_test_ep"
    assert METHODS.entry("ep_cam").source == "epcam (cb-test-dist)"
    assert methods.get("ep_cam")(_net(), "0", torch.randn(2, 3, 8, 8), 0).shape == (2, 8, 8)


def test_plugin_registering_nothing_warns(tmp_path) -> None:
    with pytest.warns(UserWarning, match="registered nothing"):
        load_plugins([_plugin(tmp_path, "x = 1\n", "empty.py")], entry_points=False)


def test_recording_ends_with_loading(tmp_path) -> None:
    load_plugins([str(EXAMPLE)], entry_points=False)

    @methods.register_method("after_plugins_cam", family="gradient")
    def later(ctx):
        return ctx.capture.activations.sum(1)

    assert METHODS.entry("after_plugins_cam").meta.get("source") is None  # built-in again


_MODEL_AND_DATASET = """
import torch
from torch import nn
from benchmark.data import CamDataset, Sample, register_dataset
from benchmark.models import register_model
from benchmark.types import ModelHandle


@register_model("plugin_net", family="cnn")
def plugin_net(weights="default"):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))
    return ModelHandle(name="plugin_net", model=net.eval(), target_layer="1", input_size=(8, 8))


class Dots(CamDataset):
    num_classes = 2

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return Sample(image=torch.full((3, 8, 8), float(i)), target=i, id=f"dot{i}")


@register_dataset("plugin_dots", has_masks=False, has_boxes=False)
def plugin_dots(root=None, n=None, seed=0):
    return Dots()
"""


def test_a_plugin_may_register_models_and_datasets(tmp_path) -> None:
    from benchmark.data import DATASETS, create_dataset
    from benchmark.models import MODELS, create_model

    earlier = plugins.loaded_plugins()  # e.g. the runner tests' fakes, loaded once per process
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a plugin with a model and a dataset registered something: no warning
        (plugin,) = load_plugins([_plugin(tmp_path, _MODEL_AND_DATASET, "zoo.py")], entry_points=False)
    assert (plugin.models, plugin.datasets, plugin.methods, plugin.metrics) == (["plugin_net"], ["plugin_dots"], [], [])
    assert MODELS.entry("plugin_net").source == "zoo.py" and DATASETS.entry("plugin_dots").source == "zoo.py"
    handle = create_model("plugin_net")
    assert handle.model(create_dataset("plugin_dots")[1].image[None]).shape == (1, 2)
    assert plugins.loaded_plugins() == [*earlier, plugin]
    assert plugins.unload_plugins([plugin]) == [plugin]
    assert "plugin_net" not in MODELS and "plugin_dots" not in DATASETS and plugins.loaded_plugins() == earlier
    assert not any(m.startswith("cambench_plugin_zoo_") for m in sys.modules)
    (again,) = load_plugins([str(tmp_path / "zoo.py")], entry_points=False)  # unloaded: imported afresh
    assert again is not plugin and again.models == ["plugin_net"] and "plugin_net" in MODELS


def test_a_failing_plugin_rolls_back_its_models_and_datasets(tmp_path) -> None:
    from benchmark.data import DATASETS
    from benchmark.models import MODELS

    earlier = plugins.loaded_plugins()
    spec = _plugin(tmp_path, _MODEL_AND_DATASET + "\nraise RuntimeError('half way')\n", "half.py")
    with pytest.raises(PluginError, match=r"Plugin 'half.py' failed to import .*RuntimeError: half way"):
        load_plugins([spec], entry_points=False)
    assert "plugin_net" not in MODELS and "plugin_dots" not in DATASETS and plugins.loaded_plugins() == earlier
    clash = _plugin(tmp_path, _MODEL_AND_DATASET.replace('"plugin_dots"', '"shapes"'), "clash_data.py")
    with pytest.raises(PluginError, match=r"dataset 'shapes' is already registered \(by cambench\); clash_data.py"):
        load_plugins([clash], entry_points=False)
    assert "plugin_net" not in MODELS and DATASETS.entry("shapes").meta.get("source") is None


def test_unloading_a_plugin_puts_back_what_it_replaced(tmp_path) -> None:
    builtin = METHODS.entry("gradcam")
    spec = _plugin(
        tmp_path,
        """
        @register_method("gradcam", family="gradient", override=True)
        def mine(ctx):
            return ctx.capture.activations.sum(1)
    """,
        "override.py",
    )
    (plugin,) = load_plugins([spec], entry_points=False)
    assert METHODS.entry("gradcam").source == "override.py" and plugin.methods == ["gradcam"]
    plugins.unload_plugins([plugin])
    assert METHODS.entry("gradcam") == builtin


def test_isolated_restores_registries_and_loaded_plugins(tmp_path) -> None:
    from benchmark.models import MODELS

    (kept,) = load_plugins([str(EXAMPLE)], entry_points=False)
    builtin, loaded = METHODS.entry("gradcam"), plugins.loaded_plugins()
    with plugins.isolated():
        load_plugins([_plugin(tmp_path, _MODEL_AND_DATASET, "inner.py")], entry_points=False)
        METHODS.remove("gradcam")
        plugins.unload_plugins([kept])
        assert "topk_gradcam" not in METHODS and "plugin_net" in MODELS
    assert METHODS.entry("gradcam") == builtin and "plugin_net" not in MODELS
    assert plugins.loaded_plugins() == loaded and kept in loaded
    assert METHODS.entry("topk_gradcam").source == "my_cam.py"
    assert not any(m.startswith("cambench_plugin_inner_") for m in sys.modules)


# -- run_method(..., validate=True): the map contract on every call ---------------------------------------
def _register_bad() -> None:
    @methods.register_method("nan_cam", family="gradient")
    def nan_cam(ctx):
        raw = ctx.capture.activations.sum(1)
        raw[0, 0, 0] = float("nan")
        return raw

    @methods.register_method("int_cam", family="baseline", needs_gradients=False)
    def int_cam(ctx):
        return torch.ones(ctx.images.shape[0], 4, 4, dtype=torch.long)

    @methods.register_method("attached_cam", family="gradient")
    def attached_cam(ctx):
        with torch.enable_grad():
            return ctx.model[0](ctx.images).sum(1)  # a graph-attached map

    @methods.register_method("huge_cam", family="baseline", needs_gradients=False)
    def huge_cam(ctx):
        return torch.rand(ctx.images.shape[0], 64, 64, generator=ctx.generator())


@pytest.mark.parametrize(
    "name, problem",
    [
        ("nan_cam", r"returned NaN or inf values in 1 of 3 maps"),
        ("int_cam", r"returned dtype torch.int64; expected a floating-point map"),
        ("attached_cam", r"attached to the autograd graph; return raw.detach\(\)"),
        ("huge_cam", r"spatial size \(64, 64\): out of range; expected between \(1, 1\) and the input size \(16, 16\)"),
    ],
)
def test_run_method_validate_raises_a_contract_error(name, problem) -> None:
    _register_bad()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ctx = methods.explain_context(_net(), "1", x, [0, 1, 2])
    expected = rf"Method '{name}' \(built-in\) broke the method contract: .*{problem}"
    with pytest.raises(ContractError, match=expected) as err:
        methods.run_method(ctx, name, validate=True)
    assert len(err.value.problems) >= 1 and any(re.search(problem, p) for p in err.value.problems)
    assert name in check_methods([name], raise_on_error=False) and check_method(name)  # the check reports it


def test_run_method_validate_changes_nothing_for_a_valid_method() -> None:
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    model = _net()
    for name in ("gradcam", "scorecam", "random"):
        plain = methods.run_method(methods.explain_context(model, "1", x, [0, 1, 2]), name)
        checked = methods.run_method(methods.explain_context(model, "1", x, [0, 1, 2]), name, validate=True)
        assert torch.equal(plain.maps, checked.maps) and torch.equal(plain.raw, checked.raw)
        assert torch.equal(plain.degenerate, checked.degenerate)


def test_run_method_validate_checks_every_multiscale_variant() -> None:
    _register_bad()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ctx = methods.explain_context(_net(), "1", x, [0, 1])
    out = methods.run_method(ctx, "nan_cam", ms_flip=True)  # default: the NaN map is zeroed and flagged
    assert out.degenerate.tolist() == [True, False] and float(out.maps[0].abs().max()) == 0.0
    with pytest.raises(ContractError, match="NaN or inf values in 1 of 2 maps"):
        methods.run_method(ctx, "nan_cam", ms_flip=True, validate=True)
    ok = methods.run_method(ctx, "gradcam", ms_flip=True, validate=True)
    assert ok.maps.shape == (2, 16, 16)
