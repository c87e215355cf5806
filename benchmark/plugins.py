"""Plugins: your own CAM methods and metrics, registered exactly like the built-ins, checked before any work.

Two public functions (the CLI's ``run_bench.py run SUITE --plugin my_cams.py`` calls both, in this order):

``load_plugins(specs, *, entry_points=True, check=True) -> list[Plugin]``
    Import each spec, a ``.py`` file path or an importable module name, then every module named by the
    installed entry-point groups ``cambench.methods`` and ``cambench.metrics``. A plugin registers with the
    decorators the built-ins use (``benchmark.methods.register_method``,
    ``benchmark.metrics.register_metric``); each entry it adds records ``source=<plugin name>`` in its
    registry metadata. A name clash, an import error or (with ``check``) a plugin method that breaks the
    method contract raises :class:`PluginError` naming the plugin and the problem; a failed plugin's
    partial registrations are rolled back. Loading the same plugin twice is a no-op.

``check_methods(names=None, *, params=None, raise_on_error=True) -> dict[str, list[str]]``
    The method contract check (:func:`check_method` on each name; all registered methods by default),
    cheap enough to run before every benchmark: a tiny built-in CNN (a tiny torchvision ViT for methods
    whose metadata says ``architectures=("vit",)``) on a few random 3x32x32 images. Raises
    :class:`ContractError` listing every failure, or returns ``{name: problems}``.

The contract (see :func:`check_method`): the raw map is a floating ``[B,h,w]`` tensor, finite, no larger
than the input; the final map is ``[B,H,W]`` float32 in [0,1], detached; not every map is constant; the
same seed gives the same maps; a batch equals the same images one at a time (skipped for methods
registered with ``batch_consistent=False``, i.e. seeded per batch); the model is left as it was found (no
hooks, same parameters and buffers, eval mode, autograd state restored).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import CambenchError, ContractError, PluginError
from .methods import METHODS
from .methods.contract import check_method, check_methods
from .metrics import METRICS

ENTRY_POINT_GROUPS = ("cambench.methods", "cambench.metrics")


@dataclass
class Plugin:
    """A loaded plugin: its name (the ``source`` recorded in the registries) and what it registered."""

    name: str
    origin: str  # file path, module name, or "group:entry = value"
    methods: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)


_LOADED: dict[str, Plugin] = {}  # key -> plugin (resolved file path, module name or entry point)


# -- loading ------------------------------------------------------------------------------------------
@contextmanager
def _registering_as(source: str) -> Iterator[dict[str, list[str]]]:
    """Tag every method/metric registered inside the block with ``source=source``; record their names."""
    added: dict[str, list[str]] = {"method": [], "metric": []}
    registries = (METHODS, METRICS)
    for reg in registries:
        original = reg.add

        def add(name: str, obj: Any, *, override: bool = False, _orig=original, _kind=reg.kind, **meta: Any):
            meta.setdefault("source", source)
            entry = _orig(name, obj, override=override, **meta)
            added[_kind].append(name)
            return entry

        reg.add = add  # type: ignore[method-assign]  # instance attribute shadows the method
    try:
        yield added
    finally:
        for reg in registries:
            reg.__dict__.pop("add", None)


def _rollback(added: dict[str, list[str]]) -> None:
    for name in added["method"]:
        METHODS.remove(name)
    for name in added["metric"]:
        METRICS.remove(name)


def _import_file(path: Path) -> None:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    mod_name = f"cambench_plugin_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # so that dataclasses / pickling inside the plugin work
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise


def _load_one(key: str, name: str, origin: str, do_import) -> Plugin:
    if key in _LOADED:
        return _LOADED[key]
    with _registering_as(name) as added:
        try:
            do_import()
        except CambenchError as exc:  # name clash (Registry.add) or a plugin's own error
            _rollback(added)
            raise PluginError(f"Plugin {name!r} could not be loaded: {exc}") from exc
        except Exception as exc:
            _rollback(added)
            raise PluginError(
                f"Plugin {name!r} failed to import ({origin}): {type(exc).__name__}: {exc}. "
                "Fix the error above (run `python -c \"import ...\"` on the file to see the traceback)."
            ) from exc
    plugin = Plugin(name=name, origin=origin, methods=list(added["method"]), metrics=list(added["metric"]))
    if not plugin.methods and not plugin.metrics:
        warnings.warn(
            f"Plugin {name!r} registered no method and no metric: decorate your functions with "
            "benchmark.methods.register_method or benchmark.metrics.register_metric.",
            UserWarning,
            stacklevel=3,
        )
    _LOADED[key] = plugin
    return plugin


def _load_spec(spec: str) -> Plugin:
    if not isinstance(spec, str) or not spec.strip():
        raise PluginError(f"A plugin spec must be a .py file path or a module name, got {spec!r}.")
    looks_like_file = spec.endswith(".py") or "/" in spec or "\\" in spec
    if looks_like_file:
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise PluginError(f"Plugin file {spec!r} does not exist (resolved to {path}). Check the path.")
        return _load_one(f"file:{path}", path.name, str(path), lambda: _import_file(path))
    return _load_one(f"module:{spec}", spec, spec, lambda: importlib.import_module(spec))


def _entry_points() -> list[tuple[str, metadata.EntryPoint]]:
    eps = metadata.entry_points()
    out = []
    for group in ENTRY_POINT_GROUPS:
        for ep in eps.select(group=group):
            out.append((group, ep))
    return out


def load_plugins(
    specs: Iterable[str] = (), *, entry_points: bool = True, check: bool = True
) -> list[Plugin]:
    """Load plugins (files or modules, then the ``cambench.methods`` / ``cambench.metrics`` entry points).

    Returns the loaded :class:`Plugin` records (also those loaded earlier). With ``check``, every method a
    plugin registered passes :func:`check_methods` before this returns. Raises :class:`PluginError`.
    """
    before = set(_LOADED)
    plugins = [_load_spec(s) for s in specs]
    if entry_points:
        for group, ep in _entry_points():
            dist = getattr(getattr(ep, "dist", None), "name", None)
            name = f"{ep.name} ({dist})" if dist else ep.name
            origin = f"{group}: {ep.name} = {ep.value}"
            plugins.append(_load_one(f"entry:{origin}", name, origin, ep.load))
    if check:
        try:
            check_methods([m for p in plugins for m in p.methods])
        except ContractError:
            # Unload what this call loaded, so that a fixed plugin can be loaded again in this process.
            for key in set(_LOADED) - before:
                p = _LOADED.pop(key)
                _rollback({"method": p.methods, "metric": p.metrics})
            raise
    return plugins


__all__ = ["ContractError", "Plugin", "PluginError", "check_method", "check_methods", "load_plugins"]
