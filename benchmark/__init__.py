"""cambench: faithfulness and robustness benchmarking of Class Activation Map methods.

The submodules are imported on first use (PEP 562), so that ``run_bench.py --help`` and other commands
that need no model start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["Batch", "Capture", "ModelHandle", "Registry", "methods", "__version__"]

_LAZY = {"Batch": ".types", "Capture": ".types", "ModelHandle": ".types", "Registry": ".registry"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    if name == "methods":
        return importlib.import_module(".methods", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
