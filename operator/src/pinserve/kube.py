"""API access: server-side apply with one field manager, reads, status and events, error mapping.

Configuration, TLS and authentication are lightkube's (``lightkube.config``): the in-cluster service
account (its token file is re-read when the server answers 401: kubelet rotates it), or a kubeconfig with
certificates, a token or an exec plugin (re-run on 401: EKS and GKE tokens last minutes). The requests
themselves are plain JSON on aiohttp with lightkube's auth (pinserve.kubehttp), so every caller works with
dicts and watch events arrive as the server sends them (BOOKMARK and ERROR included).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from lightkube import ConfigError
from lightkube.config.kubeconfig import DEFAULT_KUBECONFIG, KubeConfig, SingleConfig
from lightkube.config.models import Cluster, User
from lightkube.types import PatchType

from pinserve import kubehttp
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

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ApiError(Exception):
    """A non-2xx answer; ``reason`` is the Status reason (NotFound, Conflict, Invalid, ...).

    ``status`` is 0 (retry.TRANSPORT) when no answer came (a timeout, a broken connection, credentials that
    could not be obtained); ``attempts`` says how many tries were made, ``retry_after`` what the server asked
    to wait (seconds).
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


def in_cluster_server(env: Mapping[str, str]) -> str | None:
    """The API server as client-go finds it in a pod: KUBERNETES_SERVICE_HOST/PORT, not a DNS name.

    kopf's service-account login hard-codes https://kubernetes.default.svc, which needs cluster DNS and
    ignores a chart's apiServer override (pods on the host network, clusters without kube-proxy).
    """
    host = env.get("KUBERNETES_SERVICE_HOST", "").strip()
    if not host:
        return None
    port = env.get("KUBERNETES_SERVICE_PORT", "").strip() or "443"
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


class Credentials:
    """One lightkube configuration (server, TLS, user); each client made from it refreshes its own token."""

    def __init__(self, config: SingleConfig) -> None:
        self.config = config

    @property
    def server(self) -> str:
        return self.config.cluster.server.rstrip("/")

    @classmethod
    def for_server(cls, server: str, token: str | None = None) -> Credentials:
        """A server with an optional static bearer token (tests, tools)."""
        return cls._single(KubeConfig.from_one(cluster=Cluster(server=server), user=User(token=token)))

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None, sa_dir: Path = SA_DIR) -> Credentials:
        """In cluster (KUBERNETES_SERVICE_HOST and a service-account token) first, else $KUBECONFIG."""
        env = os.environ if env is None else env
        server = in_cluster_server(env)
        if server and (sa_dir / "token").exists():
            namespace = sa_dir / "namespace"
            cluster = Cluster(server=server, certificate_auth=str(sa_dir / "ca.crt"))
            # token_file alone: lightkube reads it, and reads it again whenever the server answers 401.
            return cls._single(KubeConfig.from_one(
                cluster=cluster, user=User(token_file=str(sa_dir / "token")),
                namespace=namespace.read_text().strip() if namespace.exists() else None))
        return cls.from_kubeconfig(env.get("KUBECONFIG"))

    @classmethod
    def from_kubeconfig(cls, path: str | None = None) -> Credentials:
        """The current context of ``path`` (else $KUBECONFIG, else ~/.kube/config; the first existing
        file of a KUBECONFIG list)."""
        path = path or os.environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG
        candidates = [p for p in path.split(os.pathsep) if p]
        found = next((p for p in candidates if Path(p).expanduser().is_file()), candidates[0])
        return cls._single(KubeConfig.from_file(found))

    @classmethod
    def _single(cls, config: KubeConfig) -> Credentials:
        single = config.get()
        if single is None:  # only with a default, which is not given
            raise ConfigError("the kubeconfig has no current context")
        # A context without a user is anonymous (lightkube's client insists on one).
        return cls(single if single.user is not None else single._replace(user=User()))


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
        self._timeout = timeout
        self._http = kubehttp.Session(credentials.config, timeout)

    async def close(self) -> None:
        await self._http.close()

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
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
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

    async def _request_once(self, method: str, path: str, *, params: Mapping[str, str] | None, data: bytes | None,
                            content_type: str) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        self.requests[method] += 1
        with _transport_errors(method, path, self._timeout):
            async with self._http.send(method, path, params=params, data=data, headers=headers) as resp:
                text = await resp.text()
        if resp.status >= 400:
            error = _error(resp.status, text)
            error.retry_after = parse_retry_after(resp.headers.get("Retry-After"), dt.datetime.now(dt.UTC))
            raise error
        return json.loads(text) if text else {}

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply as pinserve.io; force takes back fields edited by hand."""
        meta = obj["metadata"]
        path = resource_path(obj["kind"], meta.get("namespace"), meta["name"])
        return await self.request("PATCH", path, params={"fieldManager": MANAGER, "force": "true"}, body=obj,
                                  content_type=PatchType.APPLY.value)  # JSON is YAML

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", resource_path(kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, kind: str, namespace: str | None = None,
                   label_selector: str | None = None) -> list[dict[str, Any]]:
        result = await self.list_object(kind, namespace, label_selector=label_selector)
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
                                  content_type=PatchType.MERGE.value)

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
                                  params={k: v for k, v in params.items() if v} or None)

    async def watch(self, kind: str, namespace: str | None = None, *, label_selector: str | None = None,
                    field_selector: str | None = None, resource_version: str | None = None,
                    timeout_seconds: int = 300) -> AsyncIterator[dict[str, Any]]:
        """Yield watch events (``{"type", "object"}``) until the server ends the watch.

        Counted as ``WATCH`` in ``requests``. The server closes the stream after ``timeout_seconds``;
        an expired ``resource_version`` arrives as an ``ERROR`` event with a Status of code 410, which
        the caller answers with a fresh list. Bookmarks are asked for and passed on. A refused start
        raises ApiError with the server's status, a broken stream ApiError(TRANSPORT).
        """
        params = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_seconds)}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        if resource_version:
            params["resourceVersion"] = resource_version
        # No total timeout on a stream; a read that stalls well past the server's own timeout is dead.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout, sock_read=timeout_seconds + 30)
        self.requests["WATCH"] += 1
        path = resource_path(kind, namespace)
        with _transport_errors("WATCH", path, self._timeout):
            async with self._http.send("GET", path, params=params, headers={"Accept": "application/json"},
                                       timeout=timeout) as resp:
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


@contextlib.contextmanager
def _transport_errors(method: str, path: str, timeout: float) -> Iterator[None]:
    """No answer (a timeout, a broken connection, an exec plugin that failed) as ApiError(TRANSPORT)."""
    try:
        yield
    except TimeoutError:
        raise ApiError(TRANSPORT, "Timeout", f"{method} {path}: no answer within {timeout:g}s") from None
    except aiohttp.ClientError as exc:  # refused, reset, closed mid-answer
        raise ApiError(TRANSPORT, "ConnectionError", f"{method} {path}: {exc}") from None
    except ConfigError as exc:  # the exec plugin or the token file failed
        raise ApiError(TRANSPORT, "CredentialsError", f"{method} {path}: {exc}") from None


def _error(status: int, text: str) -> ApiError:
    try:
        payload = json.loads(text)
        return ApiError(status, payload.get("reason") or str(status), payload.get("message") or text)
    except (ValueError, AttributeError):
        return ApiError(status, str(status), text[:500])
