"""pinserve.kube against the real API server: a List read in pages, and a watch from where it ends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pinserve.kube import Credentials, KubeApi
from tools import cluster as cluster_tools

pytestmark = pytest.mark.integration

SELECTOR = "pinserve.io/test=paged"


def configmap(namespace: str, name: str, labelled: bool = True) -> dict[str, Any]:
    labels = {"pinserve.io/test": "paged"} if labelled else {}
    return {"apiVersion": "v1", "kind": "ConfigMap", "data": {"name": name},
            "metadata": {"name": name, "namespace": namespace, "labels": labels}}


def test_a_list_read_in_pages_is_whole_and_a_watch_starts_where_it_ends(
        cluster: cluster_tools.IntegrationCluster, namespace: str) -> None:
    cluster.apply_objects([configmap(namespace, f"cm-{i}") for i in range(7)] +
                          [configmap(namespace, "other", labelled=False)])

    async def run() -> tuple[list[str], int, list[tuple[str, str]]]:
        api = KubeApi(Credentials.from_kubeconfig(str(cluster.kubeconfig)))
        try:
            listed = await api.list_object("ConfigMap", namespace, label_selector=SELECTOR, page=3)
            pages = api.requests["GET"]
            names = sorted(item["metadata"]["name"] for item in listed["items"])
            # The List's version is where a watch starts: a change made after it arrives, nothing before it.
            await api.apply(configmap(namespace, "cm-late"))
            seen: list[tuple[str, str]] = []
            async for event in api.watch("ConfigMap", namespace, label_selector=SELECTOR, timeout_seconds=20,
                                         resource_version=listed["metadata"]["resourceVersion"]):
                if event["type"] != "BOOKMARK":
                    seen.append((event["type"], event["object"]["metadata"]["name"]))
                    break
            return names, pages, seen
        finally:
            await api.close()

    names, pages, seen = asyncio.run(run())
    assert names == [f"cm-{i}" for i in range(7)]
    assert pages == 3  # 3 + 3 + 1
    assert seen == [("ADDED", "cm-late")]


def test_requests_side_by_side_share_http2_while_a_watch_runs_on_http11(
        cluster: cluster_tools.IntegrationCluster, namespace: str) -> None:
    """The real API server speaks HTTP/2 (ALPN): 24 applies at once are streams of one connection, not 24
    connections; the watch beside them has an HTTP/1.1 connection of its own, and every answer is whole."""

    async def run() -> tuple[dict[str, int], int, list[str], int]:
        api = KubeApi(Credentials.from_kubeconfig(str(cluster.kubeconfig)), watches=1)
        try:
            listed = await api.list_object("ConfigMap", namespace, label_selector=SELECTOR)
            seen: list[str] = []

            async def follow() -> None:
                async for event in api.watch("ConfigMap", namespace, label_selector=SELECTOR, timeout_seconds=30,
                                             resource_version=listed["metadata"]["resourceVersion"]):
                    if event["type"] == "ADDED":
                        seen.append(event["object"]["metadata"]["name"])
                        if len(seen) == 24:
                            return

            watching = asyncio.create_task(follow())
            answers = await asyncio.gather(*(api.apply(configmap(namespace, f"h2-{i}")) for i in range(24)))
            await asyncio.wait_for(watching, 30)
            assert api._client is not None
            pool = api._client._client._client._transport._pool  # lightkube -> httpx -> httpcore
            return dict(api.protocols), len(pool.connections), seen, len(answers)
        finally:
            await api.close()

    protocols, connections, seen, answered = asyncio.run(run())
    assert protocols == {"HTTP/2": 25, "HTTP/1.1": 1}  # the list and 24 applies; the watch
    assert connections == 1
    assert answered == 24 and sorted(seen) == sorted(f"h2-{i}" for i in range(24))
