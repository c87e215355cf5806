"""Type checks of suite values against the signature of the function they are passed to.

A suite's ``data``, ``model_kwargs``, ``[method_params.NAME]`` and ``[metric_params.NAME]`` tables end up
as keyword arguments of a dataset factory, a model factory, a method or a metric. :func:`check_kwargs`
checks each value against the parameter's type hint (``typing.get_type_hints``) before any model work, so
that ``n = "sixteen"`` is refused in seconds instead of failing (or silently turning a column into NaN)
deep inside a run. Rules (what a TOML value can be):

* ``int`` is accepted where ``float`` (or ``complex``) is expected, ``bool`` never counts as a number;
* ``Optional``/``Union``/``X | Y`` accept a value any member accepts, ``Literal`` one of its values;
* ``tuple``/``list``/``Sequence``/``Iterable`` accept a TOML array (elements checked), ``dict``/``Mapping``
  a TOML table (values checked), ``Path``/``os.PathLike`` a string;
* anything else (model classes, config dataclasses, unresolvable hints) is not checked.

Parameters without a hint are checked against the type of their registered default when that default is
a number or a bool (``step = "64"`` where the default is ``64``).
"""

from __future__ import annotations

import collections.abc as cabc
import inspect
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import PurePath
from typing import Any

from ..errors import SuiteError

_UNKNOWN = object()


def hints(fn: Callable) -> dict[str, Any]:
    """``{parameter: annotation}`` of ``fn`` (resolved when possible; unresolvable ones are dropped)."""
    target = inspect.unwrap(fn)
    if inspect.isclass(target):
        target = target.__init__
    try:
        return typing.get_type_hints(target)
    except Exception:
        out = {}
        namespace = getattr(target, "__globals__", {})
        for name, p in _parameters(fn).items():
            ann = p.annotation
            if isinstance(ann, str):
                try:
                    ann = eval(ann, dict(namespace))
                except Exception:
                    continue
            if ann is not inspect.Parameter.empty:
                out[name] = ann
        return out


def _parameters(fn: Callable) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return {}


def matches(value: Any, tp: Any) -> bool:
    """Whether the (TOML-typed) ``value`` is acceptable for the annotation ``tp``; unknown types pass."""
    if tp is Any or tp is inspect.Parameter.empty or tp is _UNKNOWN or isinstance(tp, (str, typing.TypeVar)):
        return True
    if tp is None or tp is type(None):
        return value is None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        return any(matches(value, a) for a in args)
    if origin is typing.Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if origin is typing.Annotated:
        return matches(value, args[0])
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is complex:
        return isinstance(value, (int, float, complex)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp is bytes:
        return isinstance(value, bytes)
    if tp in (os.PathLike, PurePath) or (inspect.isclass(tp) and issubclass(tp, PurePath)):
        return isinstance(value, (str, os.PathLike))
    base = origin or tp
    if base is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if len(args) == 2 and args[1] is Ellipsis:
            return all(matches(v, args[0]) for v in value)
        if args == ((),):  # tuple[()]
            return len(value) == 0
        return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args, strict=True))
    if base in (
        list,
        set,
        frozenset,
        cabc.Sequence,
        cabc.MutableSequence,
        cabc.Collection,
        cabc.Iterable,
        cabc.Set,
        cabc.MutableSet,
    ):
        if isinstance(value, str):
            return False
        if not isinstance(value, (list, tuple, set, frozenset)):
            return False
        return not args or all(matches(v, args[0]) for v in value)
    if base in (dict, cabc.Mapping, cabc.MutableMapping):
        if not isinstance(value, dict):
            return False
        if len(args) == 2:
            return all(matches(k, args[0]) and matches(v, args[1]) for k, v in value.items())
        return True
    if base in (cabc.Callable,) or tp is typing.Callable:
        return callable(value)
    return True  # a class cambench cannot judge from a TOML value (model config, tensor, ...)


def describe(tp: Any) -> str:
    """A short human name for an annotation: ``int``, ``int or None``, ``one of 'a', 'b'``, ``list of int``."""
    if tp is None or tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        parts = [describe(a) for a in args if a is not type(None)] or ["None"]  # TOML has no None
        return " or ".join(dict.fromkeys(parts))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is typing.Annotated:
        return describe(args[0])
    names = {float: "a number", int: "an integer", str: "a string", bool: "a boolean (true or false)"}
    if tp in names:
        return names[tp]
    base = origin or tp
    if base is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"array (each {describe(args[0])})"
        if args:
            return f"array of {len(args)} ({', '.join(describe(a) for a in args)})"
        return "array"
    if base in (
        list,
        set,
        frozenset,
        cabc.Sequence,
        cabc.MutableSequence,
        cabc.Collection,
        cabc.Iterable,
        cabc.Set,
        cabc.MutableSet,
    ):
        return f"array (each {describe(args[0])})" if args else "array"
    if base in (dict, cabc.Mapping, cabc.MutableMapping):
        return "table"
    if inspect.isclass(tp) and issubclass(tp, PurePath) or tp is os.PathLike:
        return "path (string)"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _default_type(default: Any) -> Any:
    """The type a parameter without a hint is checked against, from its default (numbers, bools only)."""
    if isinstance(default, bool):
        return bool
    if isinstance(default, (int, float)):
        return float  # any number (an int default may legitimately take a fraction)
    return _UNKNOWN


def check_kwargs(
    fn: Callable,
    kwargs: Mapping[str, Any],
    where: str,
    defaults: Mapping[str, Any] | None = None,
    unknown_ok: bool | None = None,
) -> None:
    """Raise :class:`SuiteError` if a value of ``kwargs`` does not fit ``fn``'s type hints (or name).

    ``where`` names the suite table (``experiment #0 (...): data``); ``defaults``: registered defaults,
    used for parameters without a hint. ``unknown_ok``: accept names ``fn`` does not declare (default: when
    ``fn`` takes ``**kwargs``). A NaN or infinite number is refused for every parameter (no parameter of
    cambench documents one; a suite built in Python meets the same rule as a TOML file).
    """
    for key, value in kwargs.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise SuiteError(
                f"{where}: `{key}` = {value!r}: parameters must be finite numbers; give a finite value (or "
                "remove the key for its default)."
            )
    params = _parameters(fn)
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if unknown_ok is None:
        unknown_ok = var_kw
    hs = hints(fn)
    for key, value in kwargs.items():
        p = params.get(key)
        if p is None or p.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            if not unknown_ok:
                names = [n for n, q in params.items() if q.kind not in (q.VAR_KEYWORD, q.VAR_POSITIONAL)]
                raise SuiteError(f"{where}: unknown key {key!r}. Valid keys: {', '.join(names) or '(none)'}.")
            tp = _default_type((defaults or {}).get(key, _UNKNOWN))
        else:
            tp = hs.get(key, _UNKNOWN)
            if tp is _UNKNOWN and p.annotation is inspect.Parameter.empty:  # no hint at all: the default's type
                default = (defaults or {}).get(key, p.default)
                tp = _default_type(default)
        if not matches(value, tp):
            expected = describe(tp)
            raise SuiteError(
                f"{where}: `{key}` must be {expected}, got {value!r} ({_toml_type(value)}). "
                f"Fix the value in the suite file (e.g. write {key} = {_example(tp)})."
            )


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _example(tp: Any) -> str:
    """A TOML literal of the expected type, for the message."""
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin is typing.Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        return _example(args[0]) if args else "..."
    if origin is typing.Literal:
        return repr(args[0]).replace("'", '"') if args else "..."
    if tp is bool:
        return "true"
    if tp is int:
        return "16"
    if tp is float:
        return "0.5"
    if tp is str or (inspect.isclass(tp) and issubclass(tp, PurePath)):
        return '"..."'
    base = origin or tp
    if base in (tuple, list, set, frozenset, cabc.Sequence, cabc.Iterable, cabc.Collection):
        inner = _example(args[0]) if args else "..."
        return f"[{inner}, ...]"
    if base in (dict, cabc.Mapping):
        return "{ ... }"
    return "..."
