"""The one error type that marrowscope raises for bad input.

Every message says what was expected, what came in and, where it helps, what to do.
The CLI prints it as one line; the app turns it into ``gr.Error``.
"""


class MarrowscopeError(Exception):
    """Bad input or a bad model folder: a sentence for the user, never a traceback."""


class ImageDecodeError(MarrowscopeError):
    """A file or upload that cannot be decoded as a cell image."""
