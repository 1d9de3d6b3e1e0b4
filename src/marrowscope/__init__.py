"""marrowscope: recognise the cell type in single-cell bone-marrow microscopy images."""

from marrowscope.core.classes import CLASSES, FULL_NAMES
from marrowscope.core.errors import MarrowscopeError

__version__ = "0.1.0"
__all__ = ["CLASSES", "FULL_NAMES", "MarrowscopeError", "classify", "__version__"]


def __getattr__(name: str):
    # ``marrowscope.classify`` loads the inference stack on first use, so that ``import marrowscope`` stays light
    if name == "classify":
        from marrowscope.core.batch import classify

        return classify
    raise AttributeError(f"module 'marrowscope' has no attribute {name!r}")
