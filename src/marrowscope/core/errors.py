"""The one error type that marrowscope raises for bad input.

Every message says what was expected, what came in and, where it helps, what to do.
The CLI prints it as one line; the app turns it into ``gr.Error``.
"""


class MarrowscopeError(Exception):
    """Bad input or a bad model folder: a sentence for the user, never a traceback."""


class ImageDecodeError(MarrowscopeError):
    """A file or upload that cannot be decoded as a cell image."""


class Unreadable:
    """A file, upload or zip member that could not be read, and the sentence saying why.

    The one type every entry point reports bad input with: prediction streams yield it in place
    of a result, dataset scans list it, and the CLI, the CSVs and the app only format it.
    """

    __slots__ = ("source", "reason")
    ok = False  # a Prediction has ok True

    def __init__(self, source: object, reason: str):
        self.source, self.reason = str(source), reason

    def __repr__(self) -> str:
        return f"Unreadable({self.source!r}, {self.reason!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unreadable) and (self.source, self.reason) == (other.source, other.reason)

    def as_dict(self) -> dict:
        return {"path": self.source, "reason": self.reason}
