"""Plugins: your own CAM methods, metrics, models and datasets, registered exactly like the built-ins, checked
before any work.

The CLI's ``run_bench.py run SUITE --plugin my_cams.py`` calls the first two, in this order:

``load_plugins(specs, *, entry_points=True, check=True) -> list[Plugin]``
    Import each spec, a ``.py`` file path or an importable module name, then every module named by the
    installed entry-point groups ``cambench.methods``, ``cambench.metrics``, ``cambench.models`` and
    ``cambench.datasets``. A plugin registers with the decorators the built-ins use
    (``benchmark.methods.register_method``, ``benchmark.metrics.register_metric``,
    ``benchmark.models.register_model``, ``benchmark.data.register_dataset``); each entry it adds records
    ``source=<plugin name>`` in its registry metadata (:meth:`benchmark.registry.Registry.recording`). A name
    clash, an import error or (with ``check``) a plugin method that breaks the method contract raises
    :class:`PluginError` naming the plugin and the problem; a failed plugin's partial registrations are
    rolled back. Loading the same plugin twice is a no-op; a plugin that registers nothing at all warns.

``check_methods(names=None, *, params=None, raise_on_error=True) -> dict[str, list[str]]``
    The method contract check (:func:`check_method` on each name; all registered methods by default),
    cheap enough to run before every benchmark: a tiny built-in CNN (a tiny torchvision ViT for methods
    whose metadata says ``architectures=("vit",)``) on a few random 3x32x32 images. Raises
    :class:`ContractError` listing every failure, or returns ``{name: problems}``.

``loaded_plugins()``, ``unload_plugins(plugins=None)`` and ``isolated()``
    The plugins loaded in this process; unregister them (all, or the given ones) so that they can be loaded
    again; a block after which the four registries and the loaded plugins are exactly as before (tests).

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
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .data import DATASETS
from .errors import CambenchError, ContractError, PluginError
from .methods import METHODS
from .methods.contract import check_method, check_methods
from .metrics import METRICS
from .models import MODELS
from .registry import Entry, Registry, RegistryState

ENTRY_POINT_GROUPS = ("cambench.methods", "cambench.metrics", "cambench.models", "cambench.datasets")
#: The registries a plugin may add to, by the kind its :class:`Plugin` record lists them under.
REGISTRIES: dict[str, Registry[Any]] = {"methods": METHODS, "metrics": METRICS, "models": MODELS, "datasets": DATASETS}


@dataclass
class Plugin:
    """A loaded plugin: its name (the ``source`` recorded in the registries) and what it registered."""

    name: str
    origin: str  # file path, module name, or "group:entry = value"
    methods: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    #: entries the plugin replaced (``override=True``), put back when it is unloaded: {(kind, name): entry}
    replaced: dict[tuple[str, str], Entry[Any]] = field(default_factory=dict, repr=False)
    #: the modules its import added to ``sys.modules`` that belong to it (dropped when it is unloaded)
    modules: list[str] = field(default_factory=list, repr=False)

    def registered(self) -> dict[str, list[str]]:
        """``{kind: names}`` of everything the plugin registered (kinds as in :data:`REGISTRIES`)."""
        return {kind: list(getattr(self, kind)) for kind in REGISTRIES}


_LOADED: dict[str, Plugin] = {}  # key -> plugin (resolved file path, module name or entry point)


# -- loading ------------------------------------------------------------------------------------------
@contextmanager
def _registering_as(source: str) -> Iterator[dict[str, list[str]]]:
    """Tag every entry registered inside the block with ``source=source``; record the names, per kind."""
    with ExitStack() as stack:
        yield {kind: stack.enter_context(reg.recording(source)) for kind, reg in REGISTRIES.items()}


def _snapshot() -> dict[str, RegistryState]:
    return {kind: reg.snapshot() for kind, reg in REGISTRIES.items()}


def _restore(states: dict[str, RegistryState]) -> None:
    for kind, state in states.items():
        REGISTRIES[kind].restore(state)


def _unregister(plugin: Plugin) -> None:
    """Remove what ``plugin`` registered, put back what it replaced, forget its modules."""
    for kind, names in plugin.registered().items():
        for name in reversed(names):
            REGISTRIES[kind].remove(name)
    for (kind, name), entry in plugin.replaced.items():
        REGISTRIES[kind].add(name, entry.obj, override=True, **entry.meta)
    for mod in plugin.modules:
        sys.modules.pop(mod, None)


def _file_module(path: Path) -> str:
    """The ``sys.modules`` name a plugin file is imported under (unique per resolved path)."""
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    return f"cambench_plugin_{path.stem}_{digest}"


def _import_file(path: Path) -> None:
    mod_name = _file_module(path)
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


def _own_modules(new: Iterable[str], roots: tuple[str, ...]) -> list[str]:
    """The names among ``new`` that are ``roots`` or inside them (not the libraries the plugin imported)."""
    return sorted(m for m in new if any(m == r or m.startswith(r + ".") for r in roots))


def _load_one(key: str, name: str, origin: str, do_import: Callable[[], Any], roots: tuple[str, ...]) -> Plugin:
    if key in _LOADED:
        return _LOADED[key]
    before, mods = _snapshot(), set(sys.modules)
    with _registering_as(name) as added:
        try:
            do_import()
        except CambenchError as exc:  # name clash (Registry.add) or a plugin's own error
            _restore(before)
            raise PluginError(f"Plugin {name!r} could not be loaded: {exc}") from exc
        except Exception as exc:
            _restore(before)
            raise PluginError(
                f"Plugin {name!r} failed to import ({origin}): {type(exc).__name__}: {exc}. "
                'Fix the error above (run `python -c "import ..."` on the file to see the traceback).'
            ) from exc
    replaced = {
        (kind, n): before[kind].entries[n] for kind, names in added.items() for n in names if n in before[kind].entries
    }
    plugin = Plugin(
        name=name,
        origin=origin,
        replaced=replaced,
        modules=_own_modules(set(sys.modules) - mods, roots),
        **{kind: list(names) for kind, names in added.items()},
    )
    if not any(plugin.registered().values()):
        warnings.warn(
            f"Plugin {name!r} registered nothing: decorate your functions and classes with "
            "benchmark.methods.register_method, benchmark.metrics.register_metric, "
            "benchmark.models.register_model or benchmark.data.register_dataset.",
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
        return _load_one(f"file:{path}", path.name, str(path), lambda: _import_file(path), (_file_module(path),))
    return _load_one(f"module:{spec}", spec, spec, lambda: importlib.import_module(spec), (spec,))


def _entry_points() -> list[tuple[str, metadata.EntryPoint]]:
    eps = metadata.entry_points()
    out = []
    for group in ENTRY_POINT_GROUPS:
        for ep in eps.select(group=group):
            out.append((group, ep))
    return out


def load_plugins(specs: Iterable[str] = (), *, entry_points: bool = True, check: bool = True) -> list[Plugin]:
    """Load plugins (files or modules, then the ``cambench.*`` entry points of :data:`ENTRY_POINT_GROUPS`).

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
            module = str(getattr(ep, "module", "") or ep.value.split(":")[0]).strip()
            plugins.append(_load_one(f"entry:{origin}", name, origin, ep.load, (module,)))
    if check:
        try:
            check_methods([m for p in plugins for m in p.methods])
        except ContractError:
            # Unload what this call loaded, so that a fixed plugin can be loaded again in this process.
            unload_plugins([p for k, p in _LOADED.items() if k not in before])
            raise
    return plugins


def loaded_plugins() -> list[Plugin]:
    """The plugins loaded in this process (by :func:`load_plugins`), in load order."""
    return list(_LOADED.values())


def unload_plugins(plugins: Iterable[Plugin] | None = None) -> list[Plugin]:
    """Unregister ``plugins`` (default: every loaded one), newest first: their methods, metrics, models and
    datasets leave the registries, entries they replaced come back, and their modules leave ``sys.modules``
    (loading them again re-imports them). Returns the plugins unloaded."""
    wanted = None if plugins is None else {id(p) for p in plugins}
    gone = [(k, p) for k, p in _LOADED.items() if wanted is None or id(p) in wanted]
    for key, plugin in reversed(gone):
        _unregister(plugin)
        del _LOADED[key]
    return [p for _, p in gone]


@contextmanager
def isolated() -> Iterator[None]:
    """A block after which the method, metric, model and dataset registries and the loaded plugins are
    exactly as before it (plugins loaded inside it are unloaded, modules included). For tests::

        @pytest.fixture(autouse=True)
        def clean_registries():
            with plugins.isolated():
                yield
    """
    states, loaded = _snapshot(), dict(_LOADED)
    try:
        yield
    finally:
        unload_plugins([p for k, p in _LOADED.items() if k not in loaded])
        _LOADED.clear()
        _LOADED.update(loaded)
        _restore(states)


__all__ = [
    "ENTRY_POINT_GROUPS",
    "ContractError",
    "Plugin",
    "PluginError",
    "check_method",
    "check_methods",
    "isolated",
    "load_plugins",
    "loaded_plugins",
    "unload_plugins",
]
