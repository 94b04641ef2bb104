"""KubeApi.watch and list_object against a loopback HTTP server that streams like the API server does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from pinserve.kube import ApiError, Credentials, KubeApi

pytestmark = pytest.mark.unit


def _event(kind: str, name: str, pad: int = 0) -> dict[str, Any]:
    return {"type": kind, "object": {"kind": "Pod", "metadata": {
        "name": name, "resourceVersion": "7", "annotations": {"big": "x" * pad}}}}


@pytest.fixture
async def server() -> AsyncIterator[tuple[KubeApi, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    async def pods(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.query))
        if request.query.get("watch") != "true":
            return web.json_response({"kind": "PodList", "metadata": {"resourceVersion": "5"}, "items": []})
        if request.query.get("resourceVersion") == "gone":
            return web.json_response({"kind": "Status", "reason": "Expired", "message": "too old"}, status=410)
        resp = web.StreamResponse()
        await resp.prepare(request)
        blob = b"".join(json.dumps(e).encode() + b"\n" for e in [
            _event("ADDED", "a"), _event("MODIFIED", "big", pad=200_000), _event("BOOKMARK", "")])
        # Chunk boundaries fall anywhere, mid-line included.
        for i in range(0, len(blob), 1000):
            await resp.write(blob[i:i + 1000])
        await resp.write(json.dumps(_event("DELETED", "last")).encode())  # no final newline
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/api/v1/pods", pods)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    api = KubeApi(Credentials.for_server(f"http://127.0.0.1:{port}", "t0ken"))
    try:
        yield api, seen
    finally:
        await api.close()
        await runner.cleanup()


async def test_watch_yields_every_event_whatever_the_chunking(server: tuple[KubeApi, list[dict[str, str]]]) -> None:
    api, seen = server
    events = [e async for e in api.watch("Pod", label_selector="a=b", field_selector="spec.nodeName=n",
                                         resource_version="5", timeout_seconds=30)]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "a"), ("MODIFIED", "big"), ("BOOKMARK", ""), ("DELETED", "last")]
    assert len(events[1]["object"]["metadata"]["annotations"]["big"]) == 200_000
    assert seen[-1] == {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": "30",
                        "labelSelector": "a=b", "fieldSelector": "spec.nodeName=n", "resourceVersion": "5"}
    assert api.requests["WATCH"] == 1 and api.requests["GET"] == 0


async def test_watch_error_status_raises(server: tuple[KubeApi, list[dict[str, str]]]) -> None:
    api, _ = server
    with pytest.raises(ApiError) as info:
        async for _ in api.watch("Pod", resource_version="gone"):
            pass
    assert info.value.status == 410 and info.value.reason == "Expired"


async def test_list_object_keeps_the_resource_version(server: tuple[KubeApi, list[dict[str, str]]]) -> None:
    api, seen = server
    result = await api.list_object("Pod", field_selector="spec.nodeName=n")
    assert result["metadata"]["resourceVersion"] == "5"
    assert seen[-1] == {"fieldSelector": "spec.nodeName=n", "limit": "500"}  # one page (no continue token)
    assert api.requests["GET"] == 1
