"""Stream one URL to a file: bounded retries with backoff on connection errors, timeouts and 5xx;
a clear, final answer on 404 and 401/403."""

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


def _attempt(source: Source, target: Path, timeout: float) -> Download:
    request = urllib.request.Request(source.url, headers={
        "User-Agent": f"pinserve-fetch/{__version__}",
        "Accept-Encoding": "identity",
    })
    for name, value in source.auth_headers().items():
        # Unredirected: credentials never follow a redirect to another host.
        request.add_unredirected_header(name.capitalize(), value)
    host = urlsplit(source.url).netloc
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        detail = _error_detail(err)
        who = f"as {source.auth}" if source.signer else "anonymously (no credentials in the environment)"
        if err.code in (404, 410):
            at = f" at {source.url}" if source.url != source.uri else ""
            raise NotFoundError(f"{source.uri}: HTTP {err.code}, no such object{at}{detail}") from None
        if err.code in (401, 403):
            raise ForbiddenError(f"{source.uri}: HTTP {err.code}, access denied {who}{detail}; "
                            "check spec.model.credentialsSecret") from None
        if err.code in RETRY_STATUS:
            raise _RetryableError(f"HTTP {err.code} {err.reason}{detail}", retry_after=_retry_after(err)) from None
        raise DownloadFailedError(f"{source.uri}: HTTP {err.code} {err.reason}{detail}") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, ssl.SSLCertVerificationError):
            raise DownloadFailedError(f"{source.uri}: TLS certificate of {host} not trusted: "
                                 f"{err.reason.verify_message}") from None
        if isinstance(err.reason, TimeoutError):
            raise _RetryableError(f"no answer within {timeout:g}s from {host}", timeout=True) from None
        raise _RetryableError(f"cannot connect to {host}: {err.reason}") from None
    except TimeoutError:
        raise _RetryableError(f"no answer within {timeout:g}s from {host}", timeout=True) from None
    except (OSError, http.client.HTTPException) as err:
        raise _RetryableError(f"connection to {host} failed: {err!r}") from None

    with response:
        expected = response.headers.get("Content-Length")
        digest = hashlib.sha256()
        size = 0
        try:
            out = target.open("wb")
        except OSError as err:
            raise LocalIOError(f"cannot write {target}: {err.strerror or err}") from None
        with out:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except TimeoutError:
                    raise _RetryableError(f"download stalled for {timeout:g}s after {size} bytes",
                                     timeout=True) from None
                except (OSError, http.client.HTTPException) as err:
                    raise _RetryableError(f"download broke off after {size} bytes: {err!r}") from None
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as err:
                    raise LocalIOError(f"cannot write {target} after {size} bytes: "
                                       f"{err.strerror or err}") from None
                digest.update(chunk)
                size += len(chunk)
        if expected is not None and expected.isdigit() and int(expected) != size:
            raise _RetryableError(f"download broke off: got {size} of {expected} bytes")
    return Download(size, digest.hexdigest())


def download(
    source: Source,
    target: Path,
    *,
    timeout: float,
    retries: int,
    backoff: float,
    log: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> Download:
    """GET ``source`` into ``target``; at most ``retries`` further attempts after the first."""
    attempts = max(0, retries) + 1
    last: _RetryableError | None = None
    for attempt in range(attempts):
        try:
            return _attempt(source, target, timeout)
        except _RetryableError as exc:
            last = exc
            if attempt + 1 == attempts:
                break
            delay = min(BACKOFF_CAP, backoff * 2**attempt)
            if exc.retry_after is not None:
                delay = min(BACKOFF_CAP, max(delay, exc.retry_after))
            log(f"attempt {attempt + 1}/{attempts} failed: {exc}; retrying in {delay:.1f}s")
            sleep(delay)
    assert last is not None
    error: type[FetchError] = FetchTimeoutError if last.timeout else DownloadFailedError
    raise error(f"{source.uri}: {last} (gave up after {attempts} attempt{'s' if attempts > 1 else ''})")
