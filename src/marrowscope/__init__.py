"""marrowscope: recognise the cell type in single-cell bone-marrow microscopy images."""

from marrowscope.core.classes import CLASSES, FULL_NAMES
from marrowscope.core.errors import MarrowscopeError

__version__ = "0.1.0"
__all__ = ["CLASSES", "FULL_NAMES", "MarrowscopeError", "__version__"]
