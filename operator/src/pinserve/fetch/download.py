"""Stream one URL to a file: bounded retries with backoff on connection errors, timeouts and 5xx;
a clear, final answer on 404 and 401/403; the download limit, the stall timeout and the deadline
enforced on every chunk."""

from __future__ import annotations

import hashlib
import http.client
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pinserve import __version__
from pinserve.fetch.errors import (
    DownloadFailedError,
    FetchError,
    FetchTimeoutError,
    ForbiddenError,
    LocalIOError,
    NotFoundError,
)
from pinserve.fetch.limits import Budget, Clock, Limits
from pinserve.fetch.sources import Source

CHUNK = 1 << 20
BACKOFF_CAP = 30.0
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Download:
    size: int
    sha256: str


class _RetryableError(Exception):
    """One failed attempt that another may fix."""

    def __init__(self, message: str, *, timeout: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.retry_after = retry_after


def _error_detail(err: urllib.error.HTTPError) -> str:
    """S3 and GCS explain themselves in XML (<Code>, <Message>); keep that, drop the rest."""
    try:
        body = err.read(4096).decode("utf-8", "replace")
    except Exception:  # the body is a courtesy
        return ""
    found = [m.group(1).strip() for tag in ("Code", "Message")
             if (m := re.search(rf"<{tag}>(.*?)</{tag}>", body, re.S))]
    return f" ({': '.join(found)})" if found else ""


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    value = err.headers.get("Retry-After", "") if err.headers else ""
    return float(value) if value.strip().isdigit() else None


class Sink:
    """The download file: every chunk counted against --max-download-bytes (and the deadline), then hashed."""

    def __init__(self, target: Path, budget: Budget) -> None:
        self.target = target
        self.budget = budget
        self.digest = hashlib.sha256()
        self.size = 0
        try:
            self.out = target.open("wb")
        except OSError as err:
            raise LocalIOError(f"cannot write {target}: {err.strerror or err}") from None

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.out.close()

    def write(self, chunk: bytes) -> None:
        self.budget.add(len(chunk))
        try:
            self.out.write(chunk)
        except OSError as err:
            raise LocalIOError(f"cannot write {self.target} after {self.size} bytes: "
                               f"{err.strerror or err}") from None
        self.digest.update(chunk)
        self.size += len(chunk)

    def result(self) -> Download:
        return Download(self.size, self.digest.hexdigest())


def download_budget(source: Source, limits: Limits, clock: Clock) -> Budget:
    return Budget(limits.max_download, f"the download of {source.shown}", "--max-download-bytes",
                  "PINSERVE_FETCH_MAX_DOWNLOAD", clock)


def _attempt(source: Source, target: Path, limits: Limits, clock: Clock) -> Download:
    request = urllib.request.Request(source.request_url, headers={
        "User-Agent": f"pinserve-fetch/{__version__}",
        "Accept-Encoding": "identity",
    })
    for name, value in source.headers.items():
        # Unredirected: credentials never follow a redirect to another host.
        request.add_unredirected_header(name.capitalize(), value)
    host = urlsplit(source.request_url).netloc
    # The socket timeout is the stall timeout: a connect, or a read that gets no byte, for this long fails.
    stall = clock.bound(limits.stall)
    try:
        response = urllib.request.urlopen(request, timeout=stall)
    except urllib.error.HTTPError as err:
        detail = _error_detail(err)
        who = f"with {source.auth}" if source.auth != "anonymous" else "anonymously (no credentials in the URI)"
        if err.code in (404, 410):
            raise NotFoundError(f"{source.shown}: HTTP {err.code}, no such object{detail}") from None
        if err.code in (401, 403):
            raise ForbiddenError(f"{source.shown}: HTTP {err.code}, access denied {who}{detail}; "
                                 "check spec.model.credentialsSecret") from None
        if err.code in RETRY_STATUS:
            raise _RetryableError(f"HTTP {err.code} {err.reason}{detail}", retry_after=_retry_after(err)) from None
        raise DownloadFailedError(f"{source.shown}: HTTP {err.code} {err.reason}{detail}") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, ssl.SSLCertVerificationError):
            raise DownloadFailedError(f"{source.shown}: TLS certificate of {host} not trusted: "
                                      f"{err.reason.verify_message}") from None
        if isinstance(err.reason, TimeoutError):
            raise _RetryableError(f"no answer within {stall:g}s from {host}", timeout=True) from None
        raise _RetryableError(f"cannot connect to {host}: {err.reason}") from None
    except TimeoutError:
        raise _RetryableError(f"no answer within {stall:g}s from {host}", timeout=True) from None
    except (OSError, http.client.HTTPException) as err:
        raise _RetryableError(f"connection to {host} failed: {err!r}") from None

    with response:
        budget = download_budget(source, limits, clock)
        expected = response.headers.get("Content-Length")
        if expected is not None and expected.isdigit():
            budget.expect(int(expected), "its Content-Length")
        with Sink(target, budget) as sink:
            while True:
                clock.check(f"downloading {source.shown} ({sink.size} bytes so far)")
                try:
                    chunk = response.read1(CHUNK)  # what has arrived: the stall timeout is per byte, not per MiB
                except TimeoutError:
                    raise _RetryableError(f"download stalled: no byte for {stall:g}s after {sink.size} bytes "
                                          "(the stall timeout, --timeout)", timeout=True) from None
                except (OSError, http.client.HTTPException) as err:
                    raise _RetryableError(f"download broke off after {sink.size} bytes: {err!r}") from None
                if not chunk:
                    break
                sink.write(chunk)
        if expected is not None and expected.isdigit() and int(expected) != sink.size:
            raise _RetryableError(f"download broke off: got {sink.size} of {expected} bytes")
    return sink.result()


def download(
    source: Source,
    target: Path,
    *,
    limits: Limits,
    clock: Clock,
    retries: int,
    backoff: float,
    log: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> Download:
    """GET ``source`` into ``target``; at most ``retries`` further attempts after the first, all within the
    deadline. gs:// and s3:// go through obstore (which retries on its own)."""
    if source.is_object_store:
        from pinserve.fetch.objstore import download_object  # noqa: PLC0415  (obstore loads only when needed)

        return download_object(source, target, limits=limits, clock=clock, retries=retries)
    attempts = max(0, retries) + 1
    last: _RetryableError | None = None
    for attempt in range(attempts):
        try:
            return _attempt(source, target, limits, clock)
        except _RetryableError as exc:
            last = exc
            if attempt + 1 == attempts:
                break
            delay = min(BACKOFF_CAP, backoff * 2**attempt)
            if exc.retry_after is not None:
                delay = min(BACKOFF_CAP, max(delay, exc.retry_after))
            clock.check(f"retrying {source.shown} after: {exc}")
            delay = min(delay, max(0.0, clock.remaining()))
            log(f"attempt {attempt + 1}/{attempts} failed: {exc}; retrying in {delay:.1f}s")
            sleep(delay)
    assert last is not None
    error: type[FetchError] = FetchTimeoutError if last.timeout else DownloadFailedError
    raise error(f"{source.shown}: {last} (gave up after {attempts} attempt{'s' if attempts > 1 else ''})")
