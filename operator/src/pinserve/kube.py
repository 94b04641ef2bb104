"""API access: server-side apply with one field manager, reads, status and events, error mapping.

Everything goes through lightkube's ``AsyncClient``: its configuration, TLS and authentication (the
in-cluster service account, whose token file is re-read when the server answers 401 as kubelet rotates it;
or a kubeconfig with certificates, a token or an exec plugin, re-run on 401 as EKS and GKE tokens last
minutes), its request building from the kinds of pinserve.kubekinds (paths, queries, bodies, the field
manager), its httpx transport and its decoding. Each KubeApi call is one request per try, driven through
the client's ``prepare_request``/``build_adapter_request``/``send``/``handle_response``, so that
pinserve.retry's bounded retries, the request counter and the server's Retry-After stay pinserve's, and a
watch is exactly one watch request whose events (BOOKMARK and 410 ERROR included) reach the caller as the
server sends them. Bodies are plain dicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx2 as httpx
import lightkube
import msgspec
from lightkube import ConfigError
from lightkube.config import client_adapter
from lightkube.config.kubeconfig import DEFAULT_KUBECONFIG, KubeConfig, SingleConfig
from lightkube.config.models import Cluster, User
from lightkube.core.generic_client import ALL_NS, BasicRequest, GenericAsyncClient
from lightkube.types import PatchType

from pinserve import kubekinds
from pinserve.render.common import MANAGER
from pinserve.retry import TRANSPORT, RetryPolicy, next_wait, parse_retry_after, retryable

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


# Connections to the API server kept alive for requests: side-by-side requests re-opened connections, a TLS
# handshake each, with httpx's default of 20. Watches have a pool of their own (a watch holds its connection for
# as long as it runs), so the requests' pool, which probes each idle connection at every request's start and
# end, holds only its own. HTTP/2 was measured and left (2026-12-02): requests over one HTTP/2 connection took
# the kopf floor's create->Deployment p50 from 55-68 ms to 149-164 ms (it makes its applies with this client)
# and did not lower the operator's CPU per create (67.7 -> 70.8 ms at 600 ModelServers).
POOL_CONNECTIONS = 64
WATCH_SPARE = 8  # watch connections beyond those the caller declares (opened only when needed)
# Items per page of a List (client-go's pager and reflector use 500).
LIST_PAGE = 500


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
    """The operator's only door to the API server; counts requests (tries) by verb for the benchmarks."""

    def __init__(self, credentials: Credentials, *, timeout: float = 30.0, retry: RetryPolicy | None = None,
                 watches: int = 0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rand: Callable[[], float] = random.random) -> None:
        self.credentials = credentials
        self.requests: Counter[str] = Counter()
        # Answers by the protocol they came in ("HTTP/1.1"; a proxy could answer otherwise).
        self.protocols: Counter[str] = Counter()
        self.retry = retry or RetryPolicy()
        # Injected for tests, which record the waits instead of spending them.
        self.sleep = sleep
        self.rand = rand
        self._timeout = timeout
        # ``watches``: how many the caller keeps open; a few more may run (peering, tools) without waiting.
        self._watches = max(watches, 0) + WATCH_SPARE
        self._client: lightkube.AsyncClient | None = None
        self._watcher: lightkube.AsyncClient | None = None

    def _make(self, connections: int) -> lightkube.AsyncClient:
        config = self.credentials.config
        # httpx keeps 20 idle connections by default: a burst would close and re-open (a TLS handshake each)
        # the rest. The transport keeps as many as it may open.
        transport = httpx.AsyncHTTPTransport(
            verify=client_adapter.verify_cluster(config.cluster, config.user or User(), config.abs_file),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections))
        return lightkube.AsyncClient(config, field_manager=MANAGER, transport=transport,
                                     timeout=httpx.Timeout(self._timeout))

    def _lightkube(self, *, watch: bool = False) -> GenericAsyncClient:
        """The lightkube client for requests, or with ``watch`` for watches (a connection each); made on first
        use, in the running loop; again after ``close``."""
        if watch:
            if self._watcher is None:
                self._watcher = self._make(self._watches)
            client = self._watcher
        else:
            if self._client is None:
                self._client = self._make(POOL_CONNECTIONS)
            client = self._client
        # AsyncClient's request engine: the public methods would send, decode and raise in one go, and its
        # watch loops forever; pinserve needs each try on its own (see the module's docstring).
        return client._client

    async def close(self) -> None:
        for name in ("_client", "_watcher"):
            client = getattr(self, name)
            if client is not None:
                setattr(self, name, None)
                await client.close()

    async def _send(self, br: BasicRequest, verb: str | None = None) -> httpx.Response:
        """One request (``br``, built by lightkube), retried as pinserve.retry says (bounded, jittered,
        Retry-After honoured); an answer of 400 or more raises ApiError."""
        verb = verb or br.method
        retry = 0
        while True:
            client = self._lightkube()
            self.requests[verb] += 1
            try:
                with _transport_errors(br.method, br.url, self._timeout):
                    resp = await _transmit(client, client.build_adapter_request(br))
                self.protocols[resp.http_version] += 1
                if resp.status_code >= 400:
                    raise _error(resp)
                return resp
            except ApiError as exc:
                exc.attempts = retry + 1
                wait = next_wait(self.retry, retry, status=exc.status, retry_after=exc.retry_after,
                                 rand=self.rand()) if retryable(br.method, exc.status) else None
                if wait is None:
                    raise
            await self.sleep(wait)
            retry += 1

    async def _object(self, method: str, cls: kubekinds.Kind, namespace: str | None, name: str | None = None,
                      *, obj: Any = None, params: dict[str, Any] | None = None,
                      headers: dict[str, str] | None = None) -> dict[str, Any]:
        """A call that answers with one object, decoded by lightkube (a generic resource: a dict)."""
        br = self._lightkube().prepare_request(method, res=cls, obj=obj, name=name, namespace=namespace,
                                               params=params, headers=headers)
        resp = await self._send(br)
        return dict(self._lightkube().handle_response(method, resp, br))

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """A request to a path spelled by the caller (anything the typed methods do not cover), with the same
        client, auth, retries and errors. The answer's JSON, ``{}`` if empty."""
        br = BasicRequest(method=method.upper(), url=path, params=dict(params or {}), data=body,
                          headers={"Content-Type": content_type} if body is not None else None)
        resp = await self._send(br)
        answer: dict[str, Any] = resp.json() if resp.content else {}
        return answer

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply as pinserve.io (the client's field manager); force takes back fields edited by
        hand."""
        meta = obj["metadata"]
        return await self._object("patch", kubekinds.resource(obj["kind"]), meta.get("namespace"), meta["name"],
                                  obj=dict(obj), params={"force": "true"},
                                  headers={"Content-Type": PatchType.APPLY.value})  # JSON is YAML

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """POST a new object (an Event, kopf's peering object); 409 if it exists. Never retried after a
        500 or a broken connection: it could be made twice."""
        cls = kubekinds.resource(obj["kind"])
        namespace = (obj.get("metadata") or {}).get("namespace")
        return await self._object("post", cls, namespace, obj=kubekinds.make(cls, obj))

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return await self._object("get", kubekinds.resource(kind), namespace, name)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, kind: str, namespace: str | None = None,
                   label_selector: str | None = None) -> list[dict[str, Any]]:
        result = await self.list_object(kind, namespace, label_selector=label_selector)
        items: list[dict[str, Any]] = result["items"]
        return items

    async def delete(self, kind: str, namespace: str | None, name: str, *,
                     propagation: str = "Background") -> bool:
        client = self._lightkube()
        br = client.prepare_request("delete", res=kubekinds.resource(kind), name=name, namespace=namespace,
                                    params={"propagationPolicy": propagation})
        try:
            await self._send(br)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def merge_patch(self, kind: str, namespace: str | None, name: str,
                          patch: Mapping[str, Any], sub: str = "") -> dict[str, Any]:
        return await self._object("patch", kubekinds.resource(kind, sub), namespace, name, obj=dict(patch),
                                  headers={"Content-Type": PatchType.MERGE.value})

    async def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any],
                           resource_version: str | None = None) -> dict[str, Any]:
        body = dict(patch)
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self.merge_patch("ModelServer", namespace, name, body, sub="status")

    def _collection(self, kind: str, namespace: str | None, *, watch: bool = False,
                    params: dict[str, Any]) -> tuple[kubekinds.Kind, BasicRequest]:
        """A list or watch request: every namespace when ``namespace`` is empty."""
        cls = kubekinds.resource(kind)
        scope = (namespace or ALL_NS) if kubekinds.namespaced(cls) else None
        return cls, self._lightkube().prepare_request("list", res=cls, namespace=scope, watch=watch,
                                                      params=params)

    async def list_object(self, kind: str, namespace: str | None = None, *, label_selector: str | None = None,
                          field_selector: str | None = None, page: int = LIST_PAGE) -> dict[str, Any]:
        """The List (``items`` and ``metadata.resourceVersion``, where a watch starts).

        Read in pages of ``page`` items (0: one request), as client-go's reflector does, so neither the API
        server nor pinserve builds one answer for a whole busy cluster. Every page is of the first page's
        snapshot. A continue token that expires between pages (410) is answered as client-go's pager does:
        the List is read again whole, in one request.
        """
        selectors = {"labelSelector": label_selector or None, "fieldSelector": field_selector or None}
        cls, br = self._collection(kind, namespace, params={**selectors, "limit": page or None})
        items: list[dict[str, Any]] = []
        version: str | None = None
        more = True
        while more:
            try:
                resp = await self._send(br)
            except ApiError as exc:
                if exc.status != 410 or "continue" not in br.params:
                    raise
                cls, br = self._collection(kind, namespace, params=selectors)
                items.clear()
                resp = await self._send(br)
            # lightkube keeps the continue token in ``br.params`` for the next page.
            more, page_version, found = self._lightkube().handle_response("list", resp, br)
            version = page_version or version
            items.extend(dict(item) for item in found)
        info = cls._api_info
        return {"apiVersion": info.resource.api_version, "kind": f"{kind}List",
                "metadata": {"resourceVersion": version} if version else {}, "items": items}

    async def watch(self, kind: str, namespace: str | None = None, *, label_selector: str | None = None,
                    field_selector: str | None = None, resource_version: str | None = None,
                    timeout_seconds: int = 300) -> AsyncIterator[dict[str, Any]]:
        """Yield watch events (``{"type", "object"}``) until the server ends the watch.

        Counted as ``WATCH`` in ``requests``. The server closes the stream after ``timeout_seconds``;
        an expired ``resource_version`` arrives as an ``ERROR`` event with a Status of code 410, which
        the caller answers with a fresh list. Bookmarks are asked for and passed on. A refused start
        raises ApiError with the server's status, a broken stream ApiError(TRANSPORT). Never retried
        here: the caller lists again.
        """
        _, br = self._collection(kind, namespace, watch=True, params={
            "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_seconds),
            "labelSelector": label_selector or None, "fieldSelector": field_selector or None,
            "resourceVersion": resource_version or None})
        # A read that stalls well past the server's own timeout is a dead stream.
        br.timeout = httpx.Timeout(self._timeout, read=timeout_seconds + 30)
        client = self._lightkube(watch=True)
        self.requests["WATCH"] += 1
        with _transport_errors("WATCH", br.url, self._timeout):
            resp = await _transmit(client, client.build_adapter_request(br), stream=True)
            self.protocols[resp.http_version] += 1
            try:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise _error(resp)
                # Newline-delimited JSON events of any size, whatever the chunking: split as bytes and decoded
                # by msgspec (lightkube's codec), without decoding the stream to text first.
                pending = bytearray()
                async for chunk in resp.aiter_bytes():
                    pending += chunk
                    end = pending.rfind(b"\n")
                    if end < 0:
                        continue
                    lines = pending[:end].split(b"\n")
                    del pending[:end + 1]
                    for line in lines:
                        if line.strip():
                            yield _decode_event(line)
                if pending.strip():
                    yield _decode_event(pending)
            finally:
                await resp.aclose()


_decode_json = msgspec.json.Decoder().decode


def _decode_event(line: bytes | bytearray) -> dict[str, Any]:
    event: dict[str, Any] = _decode_json(line)
    return event


async def _transmit(client: GenericAsyncClient, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
    """lightkube's send (its httpx client: auth flows, TLS, the connection pool)."""
    resp: httpx.Response = await client.send(request, stream=stream)  # type: ignore[no-untyped-call]
    return resp


@contextlib.contextmanager
def _transport_errors(method: str, path: str, timeout: float) -> Iterator[None]:
    """No answer (a timeout, a broken connection, an exec plugin that failed) as ApiError(TRANSPORT)."""
    where = f"{method} /{path.lstrip('/')}"
    try:
        yield
    except httpx.TimeoutException:
        raise ApiError(TRANSPORT, "Timeout", f"{where}: no answer within {timeout:g}s") from None
    except httpx.RequestError as exc:  # refused, reset, closed mid-answer, TLS refused
        raise ApiError(TRANSPORT, "ConnectionError", f"{where}: {exc or type(exc).__name__}") from None
    except ConfigError as exc:  # the exec plugin or the token file failed
        raise ApiError(TRANSPORT, "CredentialsError", f"{where}: {exc}") from None


def _error(resp: httpx.Response) -> ApiError:
    """An answer of 400 or more: the reason and message of its Status (as lightkube decodes it), and the
    Retry-After the server asked for."""
    status = resp.status_code
    try:  # lightkube's own error (only made for an exact application/json, and without the headers)
        decoded = lightkube.ApiError(request=resp.request, response=resp).status
        error = ApiError(status, decoded.reason or str(status), decoded.message or resp.text[:500])
    except (ValueError, TypeError, AttributeError, KeyError):
        error = ApiError(status, str(status), resp.text[:500])
    error.retry_after = parse_retry_after(resp.headers.get("Retry-After"), dt.datetime.now(dt.UTC))
    return error
