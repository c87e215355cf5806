"""Exceptions raised by cambench.

Every error says what was wrong, what was expected, and how to fix it (scikit-learn style).
"""

from __future__ import annotations

from collections.abc import Sequence


class CambenchError(Exception):
    """Base class of every error cambench raises on purpose."""


class UnknownNameError(CambenchError, KeyError):
    """A registry lookup used a name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class InputError(CambenchError, ValueError):
    """An argument of a public function is invalid (a tensor of the wrong shape, an unknown option value,
    a parameter out of range). A ``ValueError``, so ``except ValueError`` keeps working."""


class LayerError(CambenchError, ValueError):
    """A target layer could not be resolved or captured."""


class CaptureError(CambenchError, RuntimeError):
    """The hooks on the target layer saw something they cannot explain (no call, several calls, ...)."""


class DataError(CambenchError, ValueError):
    """An image, an annotation or a dataset directory is missing or corrupt."""


class WeightsError(CambenchError, FileNotFoundError):
    """Model weights are not available offline."""


class MethodUndefinedError(CambenchError, ValueError):
    """A method is not defined for this model or layer (e.g. CAM where the layer does not reach the logits
    through global average pooling -> Linear); the runner records its rows as ``undefined``, not ``error``."""


class SuiteError(CambenchError, ValueError):
    """A suite file is invalid."""


class DimensionError(CambenchError, ValueError):
    """A method or metric is not defined for the number of spatial axes of the input (2-D images, 3-D clips)."""


class PluginError(CambenchError):
    """A plugin could not be loaded (import error, name clash) or one of its methods breaks the contract."""


class ContractError(PluginError):
    """A registered method (plugin or built-in) failed the method contract check.

    ``problems``: the broken rules, one sentence each (``run_method(..., validate=True)`` fills it).
    """

    def __init__(self, *args: object, problems: Sequence[str] = ()) -> None:
        super().__init__(*args)
        self.problems: list[str] = list(problems)


class MethodTimeout(BaseException):
    """A method ran past ``--method-timeout`` (raised by :func:`benchmark.evaluate.method_deadline` from a
    ``SIGALRM`` handler). A ``BaseException``, like ``KeyboardInterrupt``: a method's own ``except Exception``
    cannot swallow it and run on untimed; the runner catches it around the method call and records the
    method's rows as ``error``."""
