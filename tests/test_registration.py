"""What the registration decorators accept: method families and metric needs are checked against one list
each (``methods.base.FAMILIES``, ``metrics.base.NEEDS``), so a typo fails at import, not mid-run."""

from __future__ import annotations

import pytest
import torch

from benchmark.methods import METHODS, register_method
from benchmark.methods.base import FAMILIES
from benchmark.metrics import METRICS, register_metric
from benchmark.metrics.base import NEEDS


def test_every_builtin_method_family_is_in_the_list() -> None:
    assert {METHODS.entry(n).meta["family"] for n in METHODS.list()} <= set(FAMILIES)


def test_unknown_method_family_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown family 'gradients'.*gradient.*projection"):
        register_method("typo_cam", family="gradients")(lambda ctx: ctx.images[:, 0])
    assert "typo_cam" not in METHODS


def test_unknown_metric_need_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown needs \\['mask'\\]"):
        register_metric("typo_metric", family="localization", higher_is_better=True, needs=("saliency", "mask"))(
            lambda ctx: {}
        )
    assert "typo_metric" not in METRICS


def test_model_is_not_a_need_and_old_registrations_still_load() -> None:
    assert "model" not in NEEDS
    assert all("model" not in METRICS.entry(n).meta["needs"] for n in METRICS.list())
    try:
        with pytest.warns(DeprecationWarning, match="'model' is no longer a need"):
            register_metric("old_style", family="faithfulness", higher_is_better=True, needs=("saliency", "model"))(
                lambda ctx: {m: torch.zeros(len(ctx.batch)) for m in ctx.saliency}
            )
        assert METRICS.entry("old_style").meta["needs"] == ("saliency",)
    finally:
        METRICS.remove("old_style")


def test_a_metric_declared_by_its_signature_lists_its_defaults_and_takes_overrides() -> None:
    """The signature is the declaration: no ``defaults=``, yet the parameters are listed (METRICS.params,
    ``meta["defaults"]``), overridable, type-checked from the hints, and reach the function."""
    from benchmark.metrics import compute_metrics, metric_params
    from benchmark.runner.validate import check_kwargs
    from benchmark.types import Batch

    @register_metric("sig_only", family="faithfulness", higher_is_better=True)
    def sig_only(ctx, *, scale: float = 2.0, mode: str = "sum", positional_too: int = 3, **extra):
        return {m: scale * positional_too * s.flatten(1).sum(1) for m, s in ctx.saliency.items()}

    try:
        assert METRICS.params("sig_only") == {"scale": 2.0, "mode": "sum", "positional_too": 3}
        assert METRICS.entry("sig_only").meta["defaults"] == METRICS.params("sig_only")
        assert metric_params("sig_only", {"scale": 0.5}) == {"scale": 0.5, "mode": "sum", "positional_too": 3}
        with pytest.raises(TypeError, match="has no parameter 'scal'. Its parameters: mode, positional_too, scale"):
            METRICS.params("sig_only", {"scal": 1.0})
        with pytest.raises(Exception, match="`scale` must be a number"):
            check_kwargs(sig_only, {"scale": "big"}, "[metric_params.sig_only]", unknown_ok=True)
        from benchmark.metrics import MetricContext

        batch = Batch(images=torch.zeros(2, 3, 4, 4), targets=torch.zeros(2, dtype=torch.long), ids=["a", "b"])
        ctx = MetricContext(model=torch.nn.Identity(), batch=batch, saliency={"m": torch.ones(2, 4, 4)})
        out = compute_metrics(ctx, ["sig_only"], {"sig_only": {"scale": 0.5}})
        assert out["sig_only"]["m"].tolist() == [0.5 * 3 * 16] * 2
    finally:
        METRICS.remove("sig_only")


def test_defaults_only_override_and_a_key_the_function_cannot_take_is_refused() -> None:
    """Two names sharing one function: the second overrides a default; ``defaults=`` naming a parameter the
    function does not take (no ``**kwargs``) fails at registration, naming it."""
    from benchmark.errors import CambenchError

    def shared(ctx, threshold: float = 0.5, relative: bool = True):
        return {}

    register_metric("shared_a", family="localization", higher_is_better=True)(shared)
    register_metric("shared_b", family="localization", higher_is_better=True, defaults={"threshold": 0.25})(shared)
    try:
        assert METRICS.params("shared_a") == {"threshold": 0.5, "relative": True}
        assert METRICS.params("shared_b") == {"threshold": 0.25, "relative": True}
        with pytest.raises(CambenchError, match=r"defaults= names \['treshold'\].*threshold, relative"):
            register_metric("shared_c", family="localization", higher_is_better=True, defaults={"treshold": 0.1})(
                shared
            )
        assert "shared_c" not in METRICS
    finally:
        METRICS.remove("shared_a")
        METRICS.remove("shared_b")


def test_a_method_declared_by_its_signature_lists_its_defaults() -> None:
    @register_method("sig_cam", family="baseline", needs_gradients=False)
    def sig_cam(ctx, power: float = 1.0, *, floor: float = 0.0):
        return ctx.images[:, 0] ** power + floor

    try:
        assert METHODS.params("sig_cam") == {"power": 1.0, "floor": 0.0}
        assert METHODS.params("sig_cam", {"floor": 0.5}) == {"power": 1.0, "floor": 0.5}
        with pytest.raises(TypeError, match="has no parameter 'pow'. Its parameters: floor, power"):
            METHODS.params("sig_cam", {"pow": 2})
    finally:
        METHODS.remove("sig_cam")


def test_builtin_defaults_are_their_signatures_unless_overridden() -> None:
    """Every built-in method and metric lists exactly its function's signature defaults: no registration
    repeats (or contradicts) them in ``defaults=``."""
    from benchmark.registry import signature_defaults
    from benchmark.runner import load_registries

    load_registries()
    for reg in (METHODS, METRICS):
        for e in reg.entries():
            if e.meta.get("source", "cambench") != "cambench" or e.obj.__module__.startswith("tests"):
                continue
            assert e.meta["defaults"] == signature_defaults(e.obj), e.name


def test_a_dataset_class_is_its_own_factory_with_metadata_from_its_attributes(capsys) -> None:
    """``@register_dataset`` on a CamDataset subclass: the registry's factory is the class, ``list datasets``
    shows its ``__init__`` arguments, the metadata comes from its class attributes (keywords override)."""
    from benchmark import cli
    from benchmark.data import DATASETS, CamDataset, Sample, create_dataset, register_dataset
    from benchmark.runner.validate import check_kwargs

    @register_dataset("dots_cls", mask_kind="dots")
    class Dots(CamDataset):
        has_masks = True
        num_classes = 3
        default_model = "dots_cnn"
        synthetic = True

        def __init__(self, n: int = 4, seed: int = 0, size: int = 8, *, root: str | None = None) -> None:
            super().__init__()
            self.n, self.size = n, size

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int) -> Sample:
            return Sample(image=torch.zeros(3, self.size, self.size), target=i % 3, id=f"d{i}")

    try:
        e = DATASETS.entry("dots_cls")
        assert e.obj is Dots
        assert e.meta == {
            "has_masks": True,
            "has_boxes": False,
            "num_classes": 3,
            "default_model": "dots_cnn",
            "synthetic": True,
            "mask_kind": "dots",
        }
        ds = create_dataset("dots_cls", n=2, seed=1, size=4, root="/ignored")
        assert isinstance(ds, Dots) and len(ds) == 2 and ds[1].image.shape == (3, 4, 4)
        with pytest.raises(Exception, match="`size` must be an integer"):
            check_kwargs(DATASETS.get("dots_cls"), {"size": "big"}, "data")
        assert cli.main(["list", "datasets"]) == 0
        line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("dots_cls "))
        assert "default_model=dots_cnn" in line and line.endswith("args: n=4, seed=0, size=8, root=None")
    finally:
        DATASETS.remove("dots_cls")


def test_a_dataset_factory_function_still_registers_and_a_non_dataset_class_is_refused() -> None:
    from benchmark.data import DATASETS, CamDataset, create_dataset, register_dataset
    from benchmark.errors import CambenchError

    class Empty(CamDataset):
        def __len__(self) -> int:
            return 0

    @register_dataset("empty_fn", has_masks=False, has_boxes=False)
    def empty_fn(root=None, n=None, seed=0):
        return Empty()

    try:
        assert DATASETS.get("empty_fn") is empty_fn and DATASETS.entry("empty_fn").meta == {
            "has_masks": False,
            "has_boxes": False,
        }
        assert isinstance(create_dataset("empty_fn", seed=3), Empty)
    finally:
        DATASETS.remove("empty_fn")
    with pytest.raises(CambenchError, match="not a CamDataset subclass"):
        register_dataset("not_a_dataset")(dict)
    assert "not_a_dataset" not in DATASETS


def test_builtin_datasets_keep_their_arguments_and_behaviour() -> None:
    """What the removed factory functions did, the classes do: ``root`` accepted (ignored) by generated data,
    ``n=None`` = the default size, ``shapes_shortcut``'s ground truth chosen from its mark, a missing root
    of a real dataset refused by name."""
    from benchmark.data import DATASETS, create_dataset
    from benchmark.data.synthetic import ShapesDataset
    from benchmark.errors import DataError
    from benchmark.runner import load_registries

    load_registries()
    builtin = [n for n in DATASETS.list() if DATASETS.get(n).__module__.startswith("benchmark.data.")]
    assert len(builtin) >= 12
    for name in builtin:
        assert isinstance(DATASETS.get(name), type), f"{name} is registered as a class"
    assert len(create_dataset("shapes", n=None, seed=0, root="/nowhere")) == 1000
    aligned = create_dataset("shapes_shortcut", n=2, seed=0)
    assert isinstance(aligned, ShapesDataset) and (aligned.shortcut, aligned.gt) == ("aligned", "mark")
    absent = create_dataset("shapes_shortcut", n=2, seed=0, shortcut="absent")
    assert (absent.shortcut, absent.gt) == ("absent", "object")
    ref = ShapesDataset(n=2, seed=0, shortcut="aligned", gt="mark")
    assert torch.equal(aligned[1].image, ref[1].image) and torch.equal(aligned[1].mask, ref[1].mask)
    for name, needle in [
        ("folder", "needs root='/path/to/images'"),
        ("imagenet", "needs root=..."),
        ("voc", "needs root=..."),
        ("coco", "needs root=..."),
        ("video_folder", "needs root="),
        ("nifti", "needs root="),
    ]:
        with pytest.raises(DataError, match=f"The {name} dataset {needle}"):
            create_dataset(name, seed=0)
