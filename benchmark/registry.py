"""One generic name -> object registry, used by methods, metrics, models and datasets.

Modelled on timm's ``@register_model`` / ``list_models`` / ``create_model``: one decorator, one lookup,
and names that are the strings users type.
"""

from __future__ import annotations

import builtins
import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Mapping, Optional, TypeVar

from .errors import CambenchError, UnknownNameError

T = TypeVar("T")


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

    # -- registration -----------------------------------------------------------------------------
    def register(
        self, name: str | None = None, *, override: bool = False, **meta: Any
    ) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (default: its ``__name__``) with ``meta``."""

        def deco(obj: T) -> T:
            self.add(name or str(getattr(obj, "__name__", "")), obj, override=override, **meta)
            return obj

        return deco

    def add(self, name: str, obj: T, *, override: bool = False, **meta: Any) -> Entry[T]:
        """Register ``obj`` directly (non-decorator form)."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise CambenchError(f"Invalid {self.kind} name {name!r}: expected a non-empty string.")
        if name in self._entries and not override:
            old = self._entries[name].meta.get("source", "cambench")
            new = meta.get("source", "cambench")
            raise CambenchError(
                f"{self.kind} {name!r} is already registered (by {old}); {new} tried to register it "
                f"again. Pick another name, or pass override=True to replace it on purpose."
            )
        entry = Entry(name, obj, dict(meta))
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)

    # -- lookup -----------------------------------------------------------------------------------
    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def get(self, name: str) -> T:
        """The registered object for ``name``; an unknown name lists the valid ones."""
        return self.entry(name).obj

    def params(self, name: str, overrides: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
        """The entry's ``defaults`` metadata updated by ``overrides``; an unknown key is a TypeError."""
        params = dict(self.entry(name).meta.get("defaults", {}))
        for key, value in (overrides or {}).items():
            if key not in params:
                raise TypeError(
                    f"{self.kind.capitalize()} {name!r} has no parameter {key!r}. Its parameters: "
                    f"{', '.join(sorted(params)) or '(none)'}."
                )
            params[key] = value
        return params

    def list(self, pattern: str | None = None, **meta_filter: Any) -> list[str]:
        """Sorted names, optionally filtered by an fnmatch ``pattern`` and metadata equality."""
        names = sorted(self._entries)
        if pattern:
            names = [n for n in names if fnmatch.fnmatch(n, pattern)]
        for key, value in meta_filter.items():
            names = [n for n in names if self._entries[n].meta.get(key) == value]
        return names

    def _unknown_message(self, name: str) -> str:
        valid = sorted(self._entries)
        close = difflib.get_close_matches(str(name), valid, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return (
            f"Unknown {self.kind} {name!r}.{hint} Valid {self.kind}s: {', '.join(valid) or '(none)'}."
        )

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> builtins.list[Entry[T]]:  # ``list`` is the method above
        return [self._entries[n] for n in sorted(self._entries)]
