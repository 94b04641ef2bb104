"""API access: server-side apply with one field manager, reads, status and events, error mapping.

A small asyncio client on aiohttp; credentials come from the same places kopf looks
(KUBECONFIG / ~/.kube/config, or the in-cluster service account).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from pinserve.api import GROUP, PLURAL, VERSION
from pinserve.render.common import MANAGER
from pinserve.retry import TRANSPORT, RetryPolicy, next_wait, parse_retry_after, retryable

# kind -> (api prefix, plural, namespaced)
_RESOURCES: dict[str, tuple[str, str, bool]] = {
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Service": ("/api/v1", "services", True),
    "Pod": ("/api/v1", "pods", True),
    "Event": ("/api/v1", "events", True),
    "Node": ("/api/v1", "nodes", False),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "Job": ("/apis/batch/v1", "jobs", True),
    "ModelServer": (f"/apis/{GROUP}/{VERSION}", PLURAL, True),
    # kopf's peering objects (leader election between operator replicas: pinserve.peering).
    "ClusterKopfPeering": ("/apis/kopf.dev/v1", "clusterkopfpeerings", False),
    "KopfPeering": ("/apis/kopf.dev/v1", "kopfpeerings", True),
}

_SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ApiError(Exception):
    """A non-2xx answer; ``reason`` is the Status reason (NotFound, Conflict, Invalid, ...).

    ``status`` is 0 (retry.TRANSPORT) when no answer came (a timeout, a broken connection);
    ``attempts`` says how many tries were made, ``retry_after`` what the server asked to wait (seconds).
    """

    def __init__(self, status: int, reason: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else f"{reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.attempts = 1

    @property
    def is_client_error(self) -> bool:
        """The request itself is wrong (retrying the same request cannot help)."""
        return 400 <= self.status < 500 and self.status not in (408, 409, 429)


def resource_path(kind: str, namespace: str | None, name: str | None = None, sub: str = "") -> str:
    try:
        prefix, plural, namespaced = _RESOURCES[kind]
    except KeyError:
        raise ValueError(f"kube.py does not know the kind {kind!r}") from None
    path = prefix
    if namespaced and namespace:
        path += f"/namespaces/{quote(namespace)}"
    path += f"/{plural}"
    if name:
        path += f"/{quote(name)}"
    if sub:
        path += f"/{sub}"
    return path


class Credentials:
    """Server URL, TLS context and a bearer token (re-read in cluster: tokens rotate)."""

    def __init__(self, server: str, ssl_context: ssl.SSLContext, token: str | None,
                 token_file: Path | None = None) -> None:
        self.server = server.rstrip("/")
        self.ssl_context = ssl_context
        self._token = token
        self._token_file = token_file
        self._token_read_at = 0.0

    def authorization(self) -> str | None:
        if self._token_file is not None and time.monotonic() - self._token_read_at > 60:
            self._token = self._token_file.read_text().strip()
            self._token_read_at = time.monotonic()
        return f"Bearer {self._token}" if self._token else None

    @classmethod
    def from_environment(cls) -> Credentials:
        if os.environ.get("KUBERNETES_SERVICE_HOST") and (_SA_DIR / "token").exists():
            host = os.environ["KUBERNETES_SERVICE_HOST"]
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if ":" in host:
                host = f"[{host}]"
            ctx = ssl.create_default_context(cafile=str(_SA_DIR / "ca.crt"))
            return cls(f"https://{host}:{port}", ctx, None, token_file=_SA_DIR / "token")
        return cls.from_kubeconfig()

    @classmethod
    def from_kubeconfig(cls, path: str | None = None) -> Credentials:
        # The kubernetes package resolves contexts, exec plugins and embedded certificates.
        from kubernetes import client, config  # noqa: PLC0415  (heavy; only needed here)

        cfg = client.Configuration()
        # The library reads $KUBECONFIG once, at import; read it now (tests and tools set it later).
        path = path or os.environ.get("KUBECONFIG") or None
        config.load_kube_config(config_file=path, client_configuration=cfg)  # type: ignore[no-untyped-call]
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.verify_ssl else \
            ssl._create_unverified_context()  # only when the kubeconfig says so
        if cfg.cert_file and cfg.key_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        keys = cfg.api_key or {}
        # The client keeps a kubeconfig token under "authorization" or, in newer releases, "BearerToken".
        raw = keys.get("authorization") or keys.get("BearerToken") or ""
        token = raw.removeprefix("Bearer ").strip() or None
        return cls(cfg.host, ctx, token)


class KubeApi:
    """The operator's only door to the API server; counts requests by verb for the benchmarks."""

    def __init__(self, credentials: Credentials, *, timeout: float = 30.0, retry: RetryPolicy | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rand: Callable[[], float] = random.random) -> None:
        self.credentials = credentials
        self.requests: Counter[str] = Counter()
        self.retry = retry or RetryPolicy()
        # Injected for tests, which record the waits instead of spending them.
        self.sleep = sleep
        self.rand = rand
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    async def _get_session(self) -> aiohttp.ClientSession:
        async with self._lock:
            if self._session is None or self._session.closed:
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=self.credentials.ssl_context, limit=64),
                    timeout=self._timeout,
                )
            return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One API call, retried as pinserve.retry says (bounded, jittered, Retry-After honoured)."""
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        retry = 0
        while True:
            try:
                return await self._request_once(method, path, params=params, data=data, content_type=content_type)
            except ApiError as exc:
                exc.attempts = retry + 1
                wait = next_wait(self.retry, retry, status=exc.status, retry_after=exc.retry_after,
                                 rand=self.rand()) if retryable(method, exc.status) else None
                if wait is None:
                    raise
            await self.sleep(wait)
            retry += 1

    async def _request_once(self, method: str, path: str, *, params: Mapping[str, str] | None, data: str | None,
                            content_type: str) -> dict[str, Any]:
        session = await self._get_session()
        headers = {"Accept": "application/json"}
        auth = self.credentials.authorization()
        if auth:
            headers["Authorization"] = auth
        if data is not None:
            headers["Content-Type"] = content_type
        self.requests[method] += 1
        try:
            async with session.request(
                method, self.credentials.server + path, params=params, data=data, headers=headers
            ) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    error = _error(resp.status, text)
                    error.retry_after = parse_retry_after(resp.headers.get("Retry-After"), dt.datetime.now(dt.UTC))
                    raise error
                return json.loads(text) if text else {}
        except TimeoutError:
            raise ApiError(TRANSPORT, "Timeout", f"{method} {path}: no answer within "
                                                 f"{self._timeout.total:g}s") from None
        except aiohttp.ClientError as exc:  # refused, reset, closed mid-answer
            raise ApiError(TRANSPORT, "ConnectionError", f"{method} {path}: {exc}") from None

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply as pinserve.io; force takes back fields edited by hand."""
        meta = obj["metadata"]
        path = resource_path(obj["kind"], meta.get("namespace"), meta["name"])
        return await self.request(
            "PATCH",
            path,
            params={"fieldManager": MANAGER, "force": "true"},
            body=obj,
            content_type="application/apply-patch+yaml",  # JSON is YAML
        )

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", resource_path(kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, kind: str, namespace: str | None = None,
                   label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self.request("GET", resource_path(kind, namespace), params=params)
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    async def delete(self, kind: str, namespace: str | None, name: str, *,
                     propagation: str = "Background") -> bool:
        try:
            await self.request("DELETE", resource_path(kind, namespace, name),
                               body={"propagationPolicy": propagation})
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def merge_patch(self, kind: str, namespace: str | None, name: str,
                          patch: Mapping[str, Any], sub: str = "") -> dict[str, Any]:
        return await self.request("PATCH", resource_path(kind, namespace, name, sub), body=patch,
                                  content_type="application/merge-patch+json")

    async def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any],
                           resource_version: str | None = None) -> dict[str, Any]:
        body = dict(patch)
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self.merge_patch("ModelServer", namespace, name, body, sub="status")

    async def list_object(self, kind: str, namespace: str | None = None, *, label_selector: str | None = None,
                          field_selector: str | None = None) -> dict[str, Any]:
        """The whole List answer (``items`` and ``metadata.resourceVersion``, where a watch starts)."""
        params = {"labelSelector": label_selector or "", "fieldSelector": field_selector or ""}
        return await self.request("GET", resource_path(kind, namespace),
                                  params={k: v for k, v in params.items() if v})

    async def watch(self, kind: str, namespace: str | None = None, *, label_selector: str | None = None,
                    field_selector: str | None = None, resource_version: str | None = None,
                    timeout_seconds: int = 300) -> AsyncIterator[dict[str, Any]]:
        """Yield watch events (``{"type", "object"}``) until the server ends the watch.

        Counted as ``WATCH`` in ``requests``. The server closes the stream after ``timeout_seconds``;
        an expired ``resource_version`` arrives as an ``ERROR`` event with a Status of code 410, which
        the caller answers with a fresh list. Bookmarks are asked for and passed on.
        """
        params = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_seconds)}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        if resource_version:
            params["resourceVersion"] = resource_version
        session = await self._get_session()
        headers = {"Accept": "application/json"}
        auth = self.credentials.authorization()
        if auth:
            headers["Authorization"] = auth
        # No total timeout on a stream; a read that stalls well past the server's own timeout is dead.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.total,
                                        sock_read=timeout_seconds + 30)
        self.requests["WATCH"] += 1
        url = self.credentials.server + resource_path(kind, namespace)
        async with session.get(url, params=params, headers=headers, timeout=timeout) as resp:
            if resp.status >= 400:
                raise _error(resp.status, await resp.text())
            buffer = b""
            # Events are newline-delimited JSON of any size (readline() would cap a line at 64 KiB).
            async for chunk in resp.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        event: dict[str, Any] = json.loads(line)
                        yield event
            if buffer.strip():
                last: dict[str, Any] = json.loads(buffer)
                yield last


def _error(status: int, text: str) -> ApiError:
    try:
        payload = json.loads(text)
        return ApiError(status, payload.get("reason") or str(status), payload.get("message") or text)
    except (ValueError, AttributeError):
        return ApiError(status, str(status), text[:500])
