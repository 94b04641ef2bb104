"""Fetch failures: one class per cause, each with a CamelCase reason and its own exit code.

The exit code lets the operator name the cause even when the termination message is lost; the
message is always a single line (it becomes a condition message).
"""

from __future__ import annotations

from typing import ClassVar

from pinserve.redact import redact_text


class FetchError(Exception):
    """Base class: ``reason`` is one CamelCase word, ``exit_code`` is distinct per subclass."""

    reason: ClassVar[str] = "FetchFailed"
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str) -> None:
        # Redacted here, so no message (stderr, termination log, Events, status) carries a presigned
        # query string or a password from a URI.
        super().__init__(redact_text(" ".join(message.split())))

    @property
    def message(self) -> str:
        return str(self)

    def line(self) -> str:
        """``Reason: message``, the form written to the termination log."""
        return f"{self.reason}: {self}"


class InvalidArgumentError(FetchError):
    reason = "InvalidArgument"
    exit_code = 3


class NotFoundError(FetchError):
    reason = "NotFound"
    exit_code = 10


class ForbiddenError(FetchError):
    reason = "Forbidden"
    exit_code = 11


class DownloadFailedError(FetchError):
    reason = "DownloadFailed"
    exit_code = 12


class FetchTimeoutError(FetchError):
    reason = "Timeout"
    exit_code = 13


class CorruptArchiveError(FetchError):
    reason = "CorruptArchive"
    exit_code = 14


class UnsafeArchiveError(FetchError):
    reason = "UnsafeArchive"
    exit_code = 15


class NotAnArchiveError(FetchError):
    reason = "NotAnArchive"
    exit_code = 16


class PathNotFoundError(FetchError):
    reason = "PathNotFound"
    exit_code = 17


class NoSavedModelError(FetchError):
    reason = "NoSavedModel"
    exit_code = 18


class AmbiguousSavedModelError(FetchError):
    reason = "AmbiguousSavedModel"
    exit_code = 19


class LocalIOError(FetchError):
    reason = "LocalIOError"
    exit_code = 20


class ModelConvertError(FetchError):
    """A frozen graph or Keras model that does not become a SavedModel (the operator's ModelConvertFailed)."""

    reason = "ModelConvertFailed"
    exit_code = 21


class NoModelFileError(FetchError):
    reason = "NoModelFile"
    exit_code = 22


class AmbiguousModelFileError(FetchError):
    reason = "AmbiguousModelFile"
    exit_code = 23


class TooLargeError(FetchError):
    """The download or the unpacked tree passed its limit (--max-download-bytes, --max-unpacked-bytes)."""

    reason = "TooLarge"
    exit_code = 24


ERRORS: tuple[type[FetchError], ...] = (
    FetchError, InvalidArgumentError, NotFoundError, ForbiddenError, DownloadFailedError, FetchTimeoutError,
    CorruptArchiveError, UnsafeArchiveError, NotAnArchiveError, PathNotFoundError, NoSavedModelError,
    AmbiguousSavedModelError, LocalIOError, ModelConvertError, NoModelFileError, AmbiguousModelFileError,
    TooLargeError,
)
# exit code -> reason, for the operator (an init container's exit code survives when its message does not).
EXIT_REASONS: dict[int, str] = {cls.exit_code: cls.reason for cls in ERRORS}
