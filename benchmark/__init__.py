"""cambench: faithfulness and robustness benchmarking of Class Activation Map methods."""

from . import methods
from .registry import Registry
from .types import Batch, Capture, ModelHandle

__version__ = "0.1.0"
__all__ = ["Batch", "Capture", "ModelHandle", "Registry", "methods", "__version__"]
