"""Before any work: the plugin methods' contract check on every input kind the suite will feed them.

The plugin loader checks a method on 2-D images (:func:`benchmark.methods.contract.check_method`); a suite
may also run it on volumes or clips (``[N,3,T,H,W]``, datasets with ``ndim = 3``) and on multi-label images
(``target = "labels"``). :func:`check_suite_methods` checks each method on the kinds of the experiments that
run it and refuses, with the fix, before any model is loaded (issue 29: a README plugin that worked on 2-D
gave 72 error rows on ``volume_cnn``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from ..data import DATASETS
from ..errors import ContractError
from ..methods import METHODS
from ..methods.contract import check_method
from ..models import MODELS
from .suite import Suite


def experiment_kinds(suite: Suite) -> list[tuple[str, set[str]]]:
    """Per experiment, ``(label, kinds)``: ``2d`` or ``3d`` (its dataset's registered ``ndim``), plus
    ``labels`` for ``target = "labels"``."""

    out = []
    for e in suite.experiments:
        try:
            ndim = DATASETS.entry(e.dataset).meta.get("ndim", 2)
        except Exception:  # an unknown dataset fails later with its own message
            ndim = 2
        kinds = {"3d" if ndim == 3 else "2d"}
        if e.target == "labels":
            kinds.add("labels")
        out.append((f"{e.label or e.model} on {e.dataset}", kinds))
    return out


def _runs(exp_methods: object, name: str) -> bool:
    """Whether an experiment's ``methods`` (``"all"``, names or family names) include method ``name``."""
    if exp_methods == "all":
        return True
    if not isinstance(exp_methods, (tuple, list)):
        return False

    return name in exp_methods or METHODS.entry(name).meta.get("family") in exp_methods


def method_kinds(suite: Suite, methods: Iterable[str]) -> dict[str, dict[str, list[str]]]:
    """``{method: {kind: [experiments]}}`` for the given methods over the suite's experiments that run them."""
    kinds = experiment_kinds(suite)
    out: dict[str, dict[str, list[str]]] = {}
    for name in methods:
        for e, (label, ks) in zip(suite.experiments, kinds, strict=True):
            if _runs(e.methods, name):
                for k in ks:
                    out.setdefault(name, {}).setdefault(k, []).append(label)
    return out


FIX_3D = (
    "On volumes and clips a method sees activations [B,C,t,h,w] and returns a raw map [B,t,h,w]: reduce over "
    "every axis after the channel, `tuple(range(2, A.ndim))`, and write einsums with '...' "
    '(torch.einsum("bc,bc...->b...", w, A)), as examples/my_cam.py does; or leave the method out of those '
    "experiments (`methods = [...]` in their [[experiments]] table)."
)


def check_suite_methods(
    suite: Suite, methods: Iterable[str], params: Mapping[str, Mapping] | None = None
) -> dict[str, dict[str, list[str]]]:
    """Contract-check ``methods`` (the plugins' methods) on every input kind beyond 2-D the suite runs them on;
    raises :class:`ContractError` naming the method, the kind, the experiments and the fix. Returns
    ``{method: {kind: experiments}}`` (what was checked)."""

    todo = method_kinds(suite, methods)
    failures = []
    for name, by_kind in sorted(todo.items()):
        for kind, exps in sorted(by_kind.items()):
            if kind == "2d":
                continue  # the plugin loader checked it
            own = next((e.method_params.get(name) for e in suite.experiments if _runs(e.methods, name)), None)
            probs = check_method(name, (params or {}).get(name) or own, kind=kind)
            if probs:
                fix = FIX_3D if kind == "3d" else "Treat each (image, class) of a batch as its own input."
                failures.append(
                    f"method {name!r} fails on {kind} inputs, which {len(exps)} experiment(s) of suite "
                    f"{suite.name!r} run ({', '.join(exps)}):\n"
                    + "\n".join(f"  - {p}" for p in probs)
                    + f"\n  Fix: {fix}"
                )
    if failures:
        raise ContractError(
            "CAM method contract check on the suite's inputs failed before any benchmark work:\n" + "\n".join(failures)
        )
    return todo


def override_model(suite: Suite, model: str) -> Suite:
    """``--model NAME``: every experiment on real data (a dataset not registered ``synthetic``) runs with
    ``model`` instead, with that model's default weights, layer and arguments (e.g. ``efficientnet_lite0``,
    whose weights ship offline, for a suite written for resnet50). Generated-data experiments keep their
    shipped models, whose classes are the dataset's own."""

    MODELS.entry(model)  # an unknown name fails here, listing the registered models
    exps = []
    for e in suite.experiments:
        synthetic = e.dataset in DATASETS and bool(DATASETS.entry(e.dataset).meta.get("synthetic"))
        if not synthetic:
            e = replace(e, model=model, label=model, weights="default", model_kwargs={}, layer=None)
        exps.append(e)
    return replace(suite, experiments=tuple(exps))
