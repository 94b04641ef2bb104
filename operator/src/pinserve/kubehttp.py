"""One exchange with the API server: aiohttp (kopf's own, C-parsed) carrying lightkube's TLS and auth.

lightkube derives the TLS context (CA, client certificate, insecure) and the auth of a configuration; its
auth objects are httpx auth flows, driven here around each aiohttp request: the flow sets the
Authorization header, is shown the answer's status, and on a 401 may hand the request back with a fresh
credential (the service-account token file read again, the exec plugin run again), which is sent once
more. httpx itself is not the transport: its pure-Python HTTP parsing cost about twice aiohttp's CPU per
request, which the operator's benchmark on two cores felt.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping

import aiohttp
import httpx2 as httpx
from lightkube.config import client_adapter
from lightkube.config.kubeconfig import SingleConfig
from lightkube.config.models import User

Flow = AsyncGenerator[httpx.Request, httpx.Response]


class Session:
    """A connection pool to one API server with one identity; opened on first use."""

    def __init__(self, config: SingleConfig, timeout: float) -> None:
        self.server = config.cluster.server.rstrip("/")
        user = config.user or User()
        self._ssl = client_adapter.verify_cluster(config.cluster, user, config.abs_file)
        self._auth = client_adapter.user_auth(user)
        self._url = httpx.URL(self.server)  # parsed once: the auth flows see the request, not its URL
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl, limit=64),
                                                  timeout=self.timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @contextlib.asynccontextmanager
    async def send(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                   data: bytes | None = None, headers: Mapping[str, str],
                   timeout: aiohttp.ClientTimeout | None = None) -> AsyncIterator[aiohttp.ClientResponse]:
        """The answer (status, headers, body unread); a 401 is sent again if the auth has a fresh credential."""
        session = self._get()
        url = self.server + path
        flow: Flow | None = self._auth.async_auth_flow(httpx.Request(method, self._url)) if self._auth else None
        try:
            auth = _authorization(await anext(flow)) if flow is not None else {}
            while True:
                resp = await session.request(method, url, params=params, data=data, headers={**headers, **auth},
                                             timeout=timeout or self.timeout)
                again = await _answer(flow, resp.status) if flow is not None else None
                if again is None:
                    break
                resp.release()
                auth = again
            try:
                yield resp
            finally:
                resp.release()
        finally:
            if flow is not None:
                await flow.aclose()


async def _answer(flow: Flow, status: int) -> dict[str, str] | None:
    """The Authorization for another try, or None when the auth is content with the answer."""
    try:
        return _authorization(await flow.asend(httpx.Response(status)))
    except StopAsyncIteration:
        return None


def _authorization(request: httpx.Request) -> dict[str, str]:
    value = request.headers.get("Authorization")
    return {"Authorization": value} if value else {}
