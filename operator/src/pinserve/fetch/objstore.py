"""gs:// and s3:// through obstore (Rust's object_store), which brings the standard credential chains.

S3: static keys (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN), EKS IRSA (AWS_ROLE_ARN with
AWS_WEB_IDENTITY_TOKEN_FILE), EKS Pod Identity and ECS (AWS_CONTAINER_CREDENTIALS_FULL_URI / _RELATIVE_URI), the
instance metadata service; AWS_SKIP_SIGNATURE=true for a public bucket. AWS_ENDPOINT_URL (or _S3) points at an
S3-compatible store (MinIO, Ceph); plain http needs an http:// endpoint or AWS_ALLOW_HTTP=true.
GCS: GOOGLE_SERVICE_ACCOUNT / GOOGLE_APPLICATION_CREDENTIALS, GKE workload identity and the metadata server;
GCS_TOKEN for a bearer token; GCS_ENDPOINT_URL / STORAGE_EMULATOR_HOST for an emulator.

The stream goes into the same limited ``Sink`` as http(s). obstore retries and times out on its own: its
``read_timeout`` is the stall timeout, its overall ``timeout`` and ``retry_timeout`` the time left.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import obstore
from obstore import exceptions as obx
from obstore.store import GCSStore, S3Store

from pinserve.fetch.download import CHUNK, Download, Sink, download_budget
from pinserve.fetch.errors import DownloadFailedError, FetchError, FetchTimeoutError, ForbiddenError, NotFoundError
from pinserve.fetch.limits import Clock, Limits
from pinserve.fetch.sources import Source
from pinserve.redact import redact_text

if TYPE_CHECKING:
    from obstore.store import ClientConfig, GCSConfig, RetryConfig, S3Config


def _client_options(source: Source, limits: Limits, clock: Clock) -> ClientConfig:
    left = timedelta(seconds=max(1.0, clock.remaining()))
    return {
        "allow_http": source.allow_http,
        "connect_timeout": timedelta(seconds=clock.bound(limits.stall)),
        "read_timeout": timedelta(seconds=limits.stall),
        "timeout": left,
    }


def _store(source: Source, limits: Limits, clock: Clock, retries: int) -> Any:
    client = _client_options(source, limits, clock)
    retry: RetryConfig = {"max_retries": retries,
                             "retry_timeout": timedelta(seconds=max(1.0, clock.remaining()))}
    config: dict[str, Any] = dict(source.options)
    if source.scheme == "s3":
        config["region"] = source.region
        if source.endpoint:
            config["endpoint"] = source.endpoint
        return S3Store(source.bucket, config=cast("S3Config", config), client_options=client, retry_config=retry)
    if source.endpoint:
        config["base_url"] = source.endpoint
    return GCSStore(source.bucket, config=cast("GCSConfig", config), client_options=client, retry_config=retry)


_DENIED = ("forbidden", "accessdenied", "access denied", "signaturedoesnotmatch", "invalidaccesskeyid",
           "401 unauthorized", "403 ")


def _failure(source: Source, err: Exception) -> FetchError:
    where = f"bucket {source.bucket!r}, key {source.key!r}"
    # The first part of obstore's message says what happened; its "Debug source" repeats it at length.
    text = " ".join(str(err).split()).split(" Debug source:", 1)[0]
    detail = redact_text(text)[:600]
    lowered = detail.lower()
    if isinstance(err, obx.NotFoundError | FileNotFoundError) or "404 not found" in lowered:
        return NotFoundError(f"{source.shown}: no such object ({where}) at {source.url}")
    if isinstance(err, obx.PermissionDeniedError | obx.UnauthenticatedError | PermissionError) or \
            any(word in lowered for word in _DENIED):
        return ForbiddenError(f"{source.shown}: access denied ({where}) with {source.auth}: {detail}; "
                              "check spec.model.credentialsSecret or the pod's workload identity")
    if isinstance(err, TimeoutError) or "timed out" in lowered or "operation timed out" in lowered:
        return FetchTimeoutError(f"{source.shown}: no byte from {source.url} within the stall timeout or the "
                                 f"deadline ({where}): {detail}")
    return DownloadFailedError(f"{source.shown}: {where} at {source.url}: {detail}")


def download_object(source: Source, target: Path, *, limits: Limits, clock: Clock, retries: int) -> Download:
    """Stream ``source``'s object into ``target`` within the download limit and the deadline."""
    budget = download_budget(source, limits, clock)
    last = time.monotonic()
    got = 0
    try:
        store = _store(source, limits, clock, retries)
        result = obstore.get(store, source.key)
        budget.expect(int(result.meta["size"]), "its size")
        with Sink(target, budget) as sink:
            for chunk in result.stream(min_chunk_size=CHUNK):
                sink.write(bytes(chunk))
                last, got = time.monotonic(), sink.size
    except FetchError:
        raise
    except (obx.BaseError, OSError, ValueError, RuntimeError) as err:
        # obstore surfaces some failures (bad configuration, a broken stream) as plain Python errors. Its
        # timeouts say only "body error": which bound ended it is told by the clocks.
        if clock.remaining() < 1.0:
            clock.check(f"downloading {source.shown} ({got} bytes so far)")
            raise FetchTimeoutError(f"the deadline of {clock.deadline:g}s for the whole fetch passed while "
                                    f"downloading {source.shown} ({got} bytes so far; --deadline-seconds, the "
                                    "operator's PINSERVE_FETCH_DEADLINE_SECONDS)") from None
        if time.monotonic() - last >= 0.9 * limits.stall:
            raise FetchTimeoutError(f"{source.shown}: download stalled: no byte for {limits.stall:g}s after "
                                    f"{got} bytes written (the stall timeout, --timeout)") from None
        raise _failure(source, err) from None
    clock.check(f"downloading {source.shown}")
    return sink.result()
