"""One generic name -> object registry, used by methods, metrics, models and datasets.

Modelled on timm's ``@register_model`` / ``list_models`` / ``create_model``: one decorator, one lookup,
and names that are the strings users type.
"""

from __future__ import annotations

import builtins
import contextlib
import difflib
import fnmatch
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import CambenchError, UnknownNameError

T = TypeVar("T")
_MISSING = object()
#: ``resolver(rest) -> (obj, meta)`` of a name prefix; ``lister() -> names after the prefix``.
Resolver = Callable[[str], tuple[Any, Mapping[str, Any]]]
Lister = Callable[[], Iterable[str]]


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object with its metadata (family, direction, needs, source plugin, ...)."""

    name: str
    obj: T
    meta: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, item: str) -> Any:
        meta = object.__getattribute__(self, "meta")
        if item in meta:
            return meta[item]
        raise AttributeError(item)


def signature_defaults(fn: Any, skip: int = 1) -> dict[str, Any]:
    """``{name: default}`` of ``fn``'s keyword parameters that have a default, in signature order.

    The first ``skip`` positional parameters (a method's ``ctx: ExplainContext``, a metric's
    ``ctx: MetricContext``) are not parameters a suite sets, nor are ``*args``/``**kwargs`` or positional-only
    ones. This is how a method or metric declares its hyper-parameters (docs/interfaces.md, "Declaring
    parameters"): the signature is the declaration. A callable without a signature has none.
    """
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return {}
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    skipped = 0
    out: dict[str, Any] = {}
    for p in params:
        if p.kind in positional and skipped < skip:
            skipped += 1
            continue
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY) and (
            p.default is not inspect.Parameter.empty
        ):
            out[p.name] = p.default
    return out


def declared_defaults(
    fn: Callable[..., Any], overrides: Mapping[str, Any] | None, what: str, skip: int = 1
) -> dict[str, Any]:
    """The parameters a registration declares: ``fn``'s :func:`signature_defaults`, updated by the explicit
    ``overrides`` (``defaults=`` of ``register_method``/``register_metric``).

    ``defaults=`` only overrides, e.g. for a second registered name sharing one function, or declares the
    parameters of a callable that forwards ``**params`` (a library bridge). A key ``fn`` cannot receive (not
    in its signature and no ``**kwargs``) is a :class:`CambenchError` naming ``what``.
    """
    out = signature_defaults(fn, skip)
    extra = dict(overrides or {})
    try:
        params = inspect.signature(fn).parameters.values()
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    except (TypeError, ValueError):
        var_kw = True
    bad = [k for k in extra if k not in out and not var_kw]
    if bad:
        raise CambenchError(
            f"{what}: defaults= names {bad}, which its function does not take (its parameters: "
            f"{', '.join(out) or '(none)'}). Declare a parameter with its default in the function's signature "
            "instead; defaults= only overrides."
        )
    out.update(extra)
    return out


class Registry(Generic[T]):
    """A named collection of objects.

    >>> METRICS = Registry("metric")
    >>> @METRICS.register("my_metric", family="faithfulness")
    ... def my_metric(...): ...
    >>> METRICS.get("my_metric")
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._prefixes: dict[str, tuple[Resolver, Lister | None]] = {}
        self._resolved: dict[str, Entry[T]] = {}  # cache of prefix lookups (never listed unless asked)
        self._recording: builtins.list[tuple[str, builtins.list[str]]] = []  # open :meth:`recording` blocks

    # -- name prefixes (timm style: "timm/resnet50", "quantus/Sparseness") -------------------------------
    def add_prefix(self, prefix: str, resolver: Resolver, lister: Lister | None = None) -> None:
        """Resolve names ``"prefix/REST"`` lazily with ``resolver(REST) -> (obj, meta)`` (cached).

        ``lister()`` (optional) enumerates the ``REST`` names the prefix offers; :meth:`list` shows them as
        ``"prefix/REST"`` with ``prefixed=True`` (or a pattern starting with ``"prefix/"``). The resolver
        raises :class:`UnknownNameError` (or ``KeyError``) for a name it does not know and a
        :class:`CambenchError` for a name it knows but cannot provide (e.g. a missing optional library).
        Registering the same prefix again replaces it (and forgets its cached entries).
        """
        if not isinstance(prefix, str) or not prefix or "/" in prefix or prefix != prefix.strip():
            raise CambenchError(f"Invalid {self.kind} prefix {prefix!r}: expected a non-empty name without '/'.")
        self._prefixes[prefix] = (resolver, lister)
        for name in [n for n in self._resolved if n.startswith(prefix + "/")]:
            del self._resolved[name]

    def prefixes(self) -> list[str]:
        return sorted(self._prefixes)

    def _split(self, name: object) -> tuple[str, str] | None:
        if not isinstance(name, str) or "/" not in name:
            return None
        prefix, rest = name.split("/", 1)
        return (prefix, rest) if prefix in self._prefixes and rest else None

    def _prefixed_names(self, prefix: str) -> list[str]:
        lister = self._prefixes[prefix][1]
        return sorted(f"{prefix}/{rest}" for rest in (lister() if lister is not None else ()))

    def _resolve(self, name: str) -> Entry[T]:
        if name in self._resolved:
            return self._resolved[name]
        split = self._split(name)
        if split is None:
            raise UnknownNameError(self._unknown_message(name))
        prefix, rest = split
        try:
            obj, meta = self._prefixes[prefix][0](rest)
        except UnknownNameError:
            raise
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None
        entry = Entry(name, obj, {"prefix": prefix, **dict(meta)})
        self._resolved[name] = entry
        return entry

    # -- registration -----------------------------------------------------------------------------
    def register(self, name: str | None = None, *, override: bool = False, **meta: Any) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (default: its ``__name__``) with ``meta``."""

        def deco(obj: T) -> T:
            self.add(name or str(getattr(obj, "__name__", "")), obj, override=override, **meta)
            return obj

        return deco

    def add(self, name: str, obj: T, *, override: bool = False, **meta: Any) -> Entry[T]:
        """Register ``obj`` directly (non-decorator form)."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise CambenchError(f"Invalid {self.kind} name {name!r}: expected a non-empty string.")
        recorder = self._recording[-1] if self._recording else None  # inside ``recording(source)``
        if recorder is not None:
            meta.setdefault("source", recorder[0])
        if name in self._entries and not override:
            old = self._entries[name].meta.get("source", "cambench")
            new = meta.get("source", "cambench")
            raise CambenchError(
                f"{self.kind} {name!r} is already registered (by {old}); {new} tried to register it "
                f"again. Pick another name, or pass override=True to replace it on purpose."
            )
        entry = Entry(name, obj, dict(meta))
        self._entries[name] = entry
        if recorder is not None:
            recorder[1].append(name)
        return entry

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)
        self._resolved.pop(name, None)

    # -- lookup -----------------------------------------------------------------------------------
    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            return self._resolve(name)

    def get(self, name: str) -> T:
        """The registered object for ``name``; an unknown name lists the valid ones."""
        return self.entry(name).obj

    def params(self, name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The entry's parameters updated by ``overrides``; an unknown key is a TypeError naming the valid ones.

        The parameters are the entry's ``defaults`` metadata (``register_method``/``register_metric`` store
        there what :func:`declared_defaults` read from the function's signature); an entry added without
        that metadata gets its object's :func:`signature_defaults`.
        """
        entry = self.entry(name)
        if "defaults" in entry.meta:
            params = dict(entry.meta["defaults"])
        else:
            params = signature_defaults(entry.obj)
        for key, value in (overrides or {}).items():
            if key not in params:
                raise TypeError(
                    f"{self.kind.capitalize()} {name!r} has no parameter {key!r}. Its parameters: "
                    f"{', '.join(sorted(params)) or '(none)'}."
                )
            params[key] = value
        return params

    def list(self, pattern: str | None = None, *, prefixed: bool = False, **meta_filter: Any) -> list[str]:
        """Sorted names, optionally filtered by an fnmatch ``pattern`` and metadata equality.

        Registered names only by default (suites' ``"all"`` and family expansions use this); ``prefixed=True``
        adds every name the prefixes' listers enumerate (``"quantus/Sparseness"``, ...), and so does a
        ``pattern`` starting with a registered ``"prefix/"``. Filtering prefixed names by metadata resolves
        them (cached).
        """
        names = sorted(self._entries)
        wanted = [p for p in self._prefixes if prefixed or (pattern or "").startswith(p + "/")]
        extra = [n for p in sorted(wanted) for n in self._prefixed_names(p) if n not in self._entries]
        if pattern:
            names = [n for n in names if fnmatch.fnmatch(n, pattern)]
            extra = [n for n in extra if fnmatch.fnmatch(n, pattern)]
        for key, value in meta_filter.items():
            names = [n for n in names if self._entries[n].meta.get(key) == value]
            extra = [n for n in extra if self._meta_or_none(n).get(key, _MISSING) == value]
        return sorted(names + extra)

    def _meta_or_none(self, name: str) -> Mapping[str, Any]:
        try:
            return self.entry(name).meta
        except CambenchError:  # listed but not resolvable now (e.g. a missing optional library)
            return {}

    def _unknown_message(self, name: str) -> str:
        split = self._split(name)
        if split is not None:  # a prefixed name: suggest among that prefix's names
            valid = self._prefixed_names(split[0])
            close = difflib.get_close_matches(str(name), valid, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            shown = ", ".join(valid) or "(the prefix lists none)"
            return f"Unknown {self.kind} {name!r}.{hint} Valid {split[0]}/ {self.kind}s: {shown}."
        valid = sorted(self._entries)
        close = difflib.get_close_matches(str(name), valid, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"Unknown {self.kind} {name!r}.{hint} Valid {self.kind}s: {', '.join(valid) or '(none)'}."

    def __contains__(self, name: object) -> bool:
        """Registered, or resolvable through a prefix (a prefixed name that resolves to an error is in)."""
        if name in self._entries or name in self._resolved:
            return True
        if self._split(name) is None:
            return False
        try:
            self._resolve(name)  # type: ignore[arg-type]
        except UnknownNameError:
            return False
        except CambenchError:
            return True
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self, *, prefixed: bool = False) -> builtins.list[Entry[T]]:  # ``list`` is the method above
        """Entries of :meth:`list` (``prefixed=True``: also every listed prefixed name, resolved)."""
        return [self.entry(n) for n in self.list(prefixed=prefixed)]

    # -- recording and isolation (plugins, tests) ---------------------------------------------------------
    @contextlib.contextmanager
    def recording(self, source: str) -> Iterator[builtins.list[str]]:
        """Inside the block, every :meth:`add` tags its entry ``source=source`` (unless the registration
        gives one) and appends its name to the yielded list, in order. Blocks nest: the innermost records.

        >>> with METHODS.recording("my_cams.py") as added:
        ...     import my_cams
        >>> added
        ['topk_gradcam']
        """
        names: builtins.list[str] = []
        frame = (source, names)
        self._recording.append(frame)
        try:
            yield names
        finally:
            self._recording[:] = [f for f in self._recording if f is not frame]

    def snapshot(self) -> RegistryState:
        """The registry's current contents (entries, prefixes, resolved cache), for :meth:`restore`."""
        return RegistryState(self.kind, dict(self._entries), dict(self._prefixes), dict(self._resolved))

    def restore(self, state: RegistryState) -> None:
        """Put back exactly the contents of ``state`` (from :meth:`snapshot` of this registry): names
        registered since are gone, names removed or replaced since are back as they were."""
        if not isinstance(state, RegistryState) or state.kind != self.kind:
            got = getattr(state, "kind", type(state).__name__)
            raise CambenchError(
                f"Cannot restore the {self.kind} registry from a snapshot of {got!r}: pass the value that "
                f"{self.kind.upper()}S.snapshot() returned."
            )
        self._entries.clear()
        self._entries.update(state.entries)
        self._prefixes.clear()
        self._prefixes.update(state.prefixes)
        self._resolved.clear()
        self._resolved.update(state.resolved)

    @contextlib.contextmanager
    def isolated(self) -> Iterator[Registry[T]]:
        """A block whose registrations and removals are undone on exit (tests: ``with METHODS.isolated():``)."""
        state = self.snapshot()
        try:
            yield self
        finally:
            self.restore(state)


@dataclass(frozen=True)
class RegistryState:
    """What :meth:`Registry.snapshot` returns: copies of a registry's tables (opaque; pass it to restore)."""

    kind: str
    entries: Mapping[str, Entry[Any]]
    prefixes: Mapping[str, tuple[Resolver, Lister | None]]
    resolved: Mapping[str, Entry[Any]]
