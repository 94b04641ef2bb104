"""API errors: KubeApi retries against a real HTTP server on 127.0.0.1 answering 429, 5xx, slowly or not at all.

The waits are recorded (KubeApi's injected ``sleep``), never spent or timed; the policy itself
(pinserve.retry) is table-tested beside.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from pinserve.kube import ApiError, Credentials, KubeApi
from pinserve.retry import TRANSPORT, RetryPolicy, next_wait, parse_retry_after, retryable

pytestmark = pytest.mark.unit

NOW = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


# -- the policy ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "status", "expected"), [
    ("GET", 429, True), ("POST", 429, True), ("PATCH", 503, True), ("POST", 503, True),
    ("GET", 500, True), ("PATCH", 502, True), ("DELETE", 504, True), ("POST", 500, False),
    ("GET", TRANSPORT, True), ("POST", TRANSPORT, False),
    ("PATCH", 409, False), ("GET", 404, False), ("PATCH", 422, False), ("GET", 403, False), ("GET", 400, False),
])
def test_retryable(method: str, status: int, expected: bool) -> None:
    assert retryable(method, status) is expected


@pytest.mark.parametrize(("header", "expected"), [
    ("3", 3.0), (" 0 ", 0.0), ("", None), (None, None), ("soon", None), ("-1", None),
    (email.utils.format_datetime(NOW + dt.timedelta(seconds=7), usegmt=True), 7.0),
    (email.utils.format_datetime(NOW - dt.timedelta(seconds=7), usegmt=True), 0.0),
])
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, NOW) == expected


def test_backoff_grows_is_jittered_and_capped() -> None:
    policy = RetryPolicy(attempts=10, base=0.25, cap=4.0)
    lows = [policy.backoff(i, 0.0) for i in range(8)]
    highs = [policy.backoff(i, 0.999999) for i in range(8)]
    assert lows[:5] == [0.125, 0.25, 0.5, 1.0, 2.0] and lows[5:] == [2.0] * 3
    assert all(h > lo for h, lo in zip(highs, lows, strict=True)) and max(highs) <= 4.0


@pytest.mark.parametrize(("retry", "status", "retry_after", "expected"), [
    (0, 503, 2.0, 2.0),  # honoured
    (0, 429, 0.0, 0.0),
    (0, 429, 31.0, None),  # longer than max_retry_after: stop, the caller comes back later
    (0, 500, 2.0, 0.125),  # Retry-After only counts on 429/503
    (2, 500, None, 0.5),
    (3, 500, None, None),  # the fourth try was the last
])
def test_next_wait(retry: int, status: int, retry_after: float | None, expected: float | None) -> None:
    assert next_wait(RetryPolicy(), retry, status=status, retry_after=retry_after, rand=0.0) == expected


# -- against a real server ------------------------------------------------------------------------------------

Answer = Callable[[web.Request], Any]


@dataclass
class Server:
    """Answers each request with the next scripted response (the last one repeats)."""

    script: list[Answer] = field(default_factory=list)
    seen: list[tuple[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path))
        answer = self.script[min(len(self.seen), len(self.script)) - 1]
        result = answer(request)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, web.StreamResponse)
        return result


def status(code: int, reason: str = "", headers: dict[str, str] | None = None) -> Answer:
    body = {"kind": "Status", "code": code, "reason": reason or str(code), "message": f"answer {code}"}
    return lambda _: web.json_response(body, status=code, headers=headers)


def ok(payload: dict[str, Any] | None = None) -> Answer:
    return lambda _: web.json_response(payload or {"kind": "ConfigMap", "metadata": {"name": "x"}})


def slow(seconds: float) -> Answer:
    async def answer(_: web.Request) -> web.Response:
        await asyncio.sleep(seconds)
        return web.json_response({})
    return answer


@contextlib.asynccontextmanager
async def serving(timeout: float) -> AsyncIterator[tuple[KubeApi, Server, list[float]]]:
    """A scripted server on loopback and a KubeApi for it whose waits are recorded, not spent."""
    server = Server()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    client = KubeApi(Credentials.for_server(f"http://127.0.0.1:{port}", "t0ken"),
                     timeout=timeout, sleep=record, rand=lambda: 0.0)
    try:
        yield client, server, waits
    finally:
        await client.close()
        await runner.cleanup()


@pytest.fixture
async def api() -> AsyncIterator[tuple[KubeApi, Server, list[float]]]:
    # A timeout no loaded machine reaches on loopback: a timeout here would be an extra, unscripted retry.
    async with serving(timeout=5.0) as served:
        yield served


@pytest.fixture
async def impatient_api() -> AsyncIterator[tuple[KubeApi, Server, list[float]]]:
    """For the timeout tests: 0.5 s, against answers that take 2 s."""
    async with serving(timeout=0.5) as served:
        yield served


CM = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "ns"}}


async def test_503_with_retry_after_is_honoured(api: tuple[KubeApi, Server, list[float]]) -> None:
    client, server, waits = api
    server.script = [status(503, "ServiceUnavailable", {"Retry-After": "2"}), ok()]
    assert (await client.apply(CM))["kind"] == "ConfigMap"
    assert waits == [2.0]
    assert server.seen == [("PATCH", "/api/v1/namespaces/ns/configmaps/x")] * 2
    assert client.requests["PATCH"] == 2


async def test_429_with_an_http_date(api: tuple[KubeApi, Server, list[float]]) -> None:
    client, server, waits = api
    later = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=20), usegmt=True)
    server.script = [status(429, "TooManyRequests", {"Retry-After": later}), ok()]
    await client.get("ConfigMap", "ns", "x")
    assert len(waits) == 1 and 15 < waits[0] <= 20


async def test_a_long_retry_after_ends_the_retries_and_is_carried(api: tuple[KubeApi, Server, list[float]]) -> None:
    client, server, waits = api
    server.script = [status(429, "TooManyRequests", {"Retry-After": "120"})]
    with pytest.raises(ApiError) as caught:
        await client.apply(CM)
    assert (caught.value.status, caught.value.retry_after, caught.value.attempts) == (429, 120.0, 1)
    assert waits == []


async def test_5xx_is_retried_with_backoff_then_raised(api: tuple[KubeApi, Server, list[float]]) -> None:
    client, server, waits = api
    server.script = [status(500, "InternalError")]
    with pytest.raises(ApiError) as caught:
        await client.get("ConfigMap", "ns", "x")
    assert (caught.value.status, caught.value.reason, caught.value.attempts) == (500, "InternalError", 4)
    assert waits == [0.125, 0.25, 0.5] and len(server.seen) == 4


async def test_5xx_recovers(api: tuple[KubeApi, Server, list[float]]) -> None:
    client, server, waits = api
    server.script = [status(502), status(504), ok()]
    await client.merge_patch("ConfigMap", "ns", "x", {"data": {"a": "b"}})
    assert waits == [0.125, 0.25]


async def test_a_post_is_not_repeated_after_a_500(api: tuple[KubeApi, Server, list[float]]) -> None:
    client, server, waits = api
    server.script = [status(500)]
    with pytest.raises(ApiError):
        await client.request("POST", "/api/v1/namespaces/ns/events", body={})
    assert waits == [] and len(server.seen) == 1


@pytest.mark.parametrize("code", [409, 404, 422, 403])
async def test_answers_for_the_caller_are_not_retried(api: tuple[KubeApi, Server, list[float]], code: int) -> None:
    client, server, waits = api
    server.script = [status(code)]
    with pytest.raises(ApiError) as caught:
        await client.apply(CM)
    assert caught.value.status == code and waits == [] and len(server.seen) == 1


async def test_a_timeout_is_retried(impatient_api: tuple[KubeApi, Server, list[float]]) -> None:
    client, server, waits = impatient_api
    server.script = [slow(2.0), ok()]
    await client.get("ConfigMap", "ns", "x")
    assert waits == [0.125] and len(server.seen) == 2


async def test_a_timeout_that_persists(impatient_api: tuple[KubeApi, Server, list[float]]) -> None:
    client, server, _ = impatient_api
    client.retry = RetryPolicy(attempts=2)
    server.script = [slow(2.0)]
    with pytest.raises(ApiError) as caught:
        await client.get("ConfigMap", "ns", "x")
    assert (caught.value.status, caught.value.reason, caught.value.attempts) == (TRANSPORT, "Timeout", 2)
    assert "no answer within 0.5s" in str(caught.value)


async def test_a_refused_connection() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    client = KubeApi(Credentials.for_server(f"http://127.0.0.1:{port}"),
                     sleep=record, rand=lambda: 0.0)
    try:
        with pytest.raises(ApiError) as caught:
            await client.get("ConfigMap", "ns", "x")
    finally:
        await client.close()
    assert (caught.value.status, caught.value.reason, caught.value.attempts) == (TRANSPORT, "ConnectionError", 4)
    assert len(waits) == 3


# -- what lightkube sends for each call --------------------------------------------------------------------------

async def test_each_call_reaches_the_path_lightkube_builds(api: tuple[KubeApi, Server, list[float]]) -> None:
    client, server, _ = api
    sent: list[tuple[str, str, dict[str, str], str, str]] = []

    async def answer(request: web.Request) -> web.Response:
        sent.append((request.method, request.path, dict(request.query), request.content_type, await request.text()))
        if request.method == "GET" and request.path.endswith("modelservers"):
            return web.json_response({"kind": "ModelServerList", "metadata": {"resourceVersion": "9"},
                                      "items": [{"metadata": {"name": "m"}}]})
        return web.json_response({"kind": "X", "metadata": {"name": "x"}})

    server.script = [answer]
    await client.apply(CM)
    assert await client.get("Node", None, "n1") == {"kind": "X", "metadata": {"name": "x"}}
    assert await client.delete("Job", "ns", "j", propagation="Foreground") is True
    await client.patch_status("ns", "m", {"status": {"ready": 1}}, resource_version="5")
    listed = await client.list_object("ModelServer", label_selector="a=b")
    await client.create({"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "m.", "namespace": "ns"}})
    await client.create({"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "p"}})
    await client.merge_patch("Pod", "ns", "p", {"metadata": {"annotations": {"a": "b"}}})
    assert listed == {"apiVersion": "pinserve.io/v1alpha1", "kind": "ModelServerList",
                      "metadata": {"resourceVersion": "9"}, "items": [{"metadata": {"name": "m"}}]}
    assert type(listed["items"][0]) is dict
    manager = {"fieldManager": "pinserve.io"}
    assert [(m, p, q, t) for m, p, q, t, _ in sent] == [
        ("PATCH", "/api/v1/namespaces/ns/configmaps/x", {**manager, "force": "true"}, "application/apply-patch+yaml"),
        ("GET", "/api/v1/nodes/n1", {}, "application/octet-stream"),
        ("DELETE", "/apis/batch/v1/namespaces/ns/jobs/j", {"propagationPolicy": "Foreground"},
         "application/octet-stream"),
        ("PATCH", "/apis/pinserve.io/v1alpha1/namespaces/ns/modelservers/m/status", manager,
         "application/merge-patch+json"),
        ("GET", "/apis/pinserve.io/v1alpha1/modelservers", {"labelSelector": "a=b", "limit": "500"},
         "application/octet-stream"),
        ("POST", "/api/v1/namespaces/ns/events", manager, "application/json"),
        ("POST", "/apis/kopf.dev/v1/clusterkopfpeerings", manager, "application/json"),
        ("PATCH", "/api/v1/namespaces/ns/pods/p", manager, "application/merge-patch+json"),
    ]
    assert sent[3][4] == '{"status":{"ready":1},"metadata":{"resourceVersion":"5"}}'
    assert client.requests == {"PATCH": 3, "GET": 2, "DELETE": 1, "POST": 2}


async def test_an_error_without_a_json_status(api: tuple[KubeApi, Server, list[float]]) -> None:
    client, server, _ = api
    server.script = [lambda _: web.Response(status=403, text="forbidden by the proxy", content_type="text/plain")]
    with pytest.raises(ApiError) as caught:
        await client.get("ConfigMap", "ns", "x")
    assert (caught.value.status, caught.value.reason, caught.value.message) == (403, "403", "forbidden by the proxy")


def list_page(names: str, token: str = "", version: str = "7",
              queries: list[dict[str, str]] | None = None) -> Answer:
    """A PodList page of pods named by the letters of ``names``, with a continue token when more follow."""
    meta = {"resourceVersion": version, **({"continue": token} if token else {})}

    def answer(request: web.Request) -> web.Response:
        if queries is not None:
            queries.append(dict(request.query))
        return web.json_response({"kind": "PodList", "metadata": meta,
                                  "items": [{"metadata": {"name": n}} for n in names]})
    return answer


async def test_a_list_is_read_in_pages(api: tuple[KubeApi, Server, list[float]]) -> None:
    client, server, _ = api
    queries: list[dict[str, str]] = []
    server.script = [list_page("ab", "t1", queries=queries), list_page("cd", "t2", queries=queries),
                     list_page("e", queries=queries)]
    listed = await client.list_object("Pod", "ns", label_selector="x=y", page=2)
    assert [item["metadata"]["name"] for item in listed["items"]] == list("abcde")
    assert listed["metadata"] == {"resourceVersion": "7"} and listed["kind"] == "PodList"
    first = {"labelSelector": "x=y", "limit": "2"}
    assert queries == [first, {**first, "continue": "t1"}, {**first, "continue": "t2"}]
    assert client.requests == {"GET": 3}


async def test_a_list_whose_continue_token_expires_is_read_again_whole(
        api: tuple[KubeApi, Server, list[float]]) -> None:
    client, server, _ = api
    queries: list[dict[str, str]] = []
    server.script = [list_page("ab", "t1", queries=queries), status(410, "Expired"),
                     list_page("abcdef", version="12", queries=queries)]
    listed = await client.list_object("Pod", None, field_selector="spec.nodeName=n1", page=2)
    # Nothing of the expired snapshot is kept: each item once, at the newer version.
    assert [item["metadata"]["name"] for item in listed["items"]] == list("abcdef")
    assert listed["metadata"] == {"resourceVersion": "12"}
    assert [path for _, path in server.seen] == ["/api/v1/pods"] * 3
    assert queries == [{"fieldSelector": "spec.nodeName=n1", "limit": "2"}, {"fieldSelector": "spec.nodeName=n1"}]


async def test_a_410_on_the_first_page_is_the_callers(api: tuple[KubeApi, Server, list[float]]) -> None:
    client, server, _ = api
    server.script = [status(410, "Expired")]
    with pytest.raises(ApiError) as caught:
        await client.list_object("Pod", "ns")
    assert caught.value.status == 410 and len(server.seen) == 1


async def test_a_list_in_one_request_when_asked(api: tuple[KubeApi, Server, list[float]]) -> None:
    client, server, _ = api
    queries: list[dict[str, str]] = []
    server.script = [list_page("abc", queries=queries)]
    listed = await client.list_object("Pod", "ns", page=0)
    assert len(listed["items"]) == 3 and queries == [{}]
