"""Failures the benchmark reports, each with a stable reason word and a distinct exit code."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes of `pinserve bench` (the table in `pinserve.bench.cli` documents them)."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    UNREACHABLE = 3
    MODEL_NOT_FOUND = 4
    SIGNATURE_NOT_FOUND = 5
    DEADLINE_EXCEEDED = 6
    REQUEST_ERRORS = 7
    INVALID_INPUT = 8


class BenchError(Exception):
    """A failure with a CamelCase reason (fit for a Kubernetes condition) and an exit code."""

    reason = "InternalError"
    exit_code = ExitCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(BenchError):
    reason = "InvalidArgument"
    exit_code = ExitCode.USAGE


class ServerUnreachableError(BenchError):
    reason = "ServerUnreachable"
    exit_code = ExitCode.UNREACHABLE


class ModelNotFoundError(BenchError):
    reason = "ModelNotFound"
    exit_code = ExitCode.MODEL_NOT_FOUND


class SignatureNotFoundError(BenchError):
    reason = "SignatureNotFound"
    exit_code = ExitCode.SIGNATURE_NOT_FOUND


class DeadlineExceededError(BenchError):
    reason = "DeadlineExceeded"
    exit_code = ExitCode.DEADLINE_EXCEEDED


class RequestFailedError(BenchError):
    """The server answered requests with errors (rejected inputs, or too many failures under load)."""

    reason = "RequestErrors"
    exit_code = ExitCode.REQUEST_ERRORS


class InvalidInputError(BenchError):
    """Inputs cannot be built from the signature and the --shape / --input-file options."""

    reason = "InvalidInput"
    exit_code = ExitCode.INVALID_INPUT


def error_for_status(code: str, message: str) -> BenchError:
    """Map a gRPC status name (REST statuses are mapped to the same names) to the failure it means."""
    if code == "UNAVAILABLE":
        return ServerUnreachableError(message)
    if code == "NOT_FOUND":
        return ModelNotFoundError(message)
    if code == "DEADLINE_EXCEEDED":
        return DeadlineExceededError(message)
    return RequestFailedError(message)
