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


def test_a_watch_keeps_its_connection_out_of_the_requests_pool(
        cluster: cluster_tools.IntegrationCluster, namespace: str) -> None:
    """24 applies side by side while a watch runs: the watch's connection is in a pool of its own, so the
    requests' pool (which probes its idle connections at every request) holds only requests', all kept alive
    for the next burst; every answer is whole and the watch sees every object."""

    async def run() -> tuple[dict[str, int], int, int, list[str]]:
        api = KubeApi(Credentials.from_kubeconfig(str(cluster.kubeconfig)), watches=1)
        try:
            listed = await api.list_object("ConfigMap", namespace, label_selector=SELECTOR)
            seen: list[str] = []
            watching_on: list[int] = []

            async def follow() -> None:
                async for event in api.watch("ConfigMap", namespace, label_selector=SELECTOR, timeout_seconds=30,
                                             resource_version=listed["metadata"]["resourceVersion"]):
                    if event["type"] == "ADDED":
                        seen.append(event["object"]["metadata"]["name"])
                        if len(seen) == 24:
                            assert api._watcher is not None  # the watch's pool, while it runs
                            watching_on.append(len(api._watcher._client._client._transport._pool.connections))
                            return

            watching = asyncio.create_task(follow())
            await asyncio.gather(*(api.apply(configmap(namespace, f"burst-{i}")) for i in range(24)))
            await asyncio.wait_for(watching, 30)
            assert api._client is not None and api._watcher is not None
            requests = api._client._client._client._transport._pool.connections  # lightkube -> httpx -> httpcore
            assert all(c.is_idle() for c in requests)  # nothing of the watch among them
            return dict(api.protocols), len(requests), watching_on[0], seen

        finally:
            await api.close()

    protocols, requests, watches, seen = asyncio.run(run())
    assert protocols == {"HTTP/1.1": 26}  # the list, 24 applies and the watch
    assert 1 <= requests <= 24 and watches == 1
    assert sorted(seen) == sorted(f"burst-{i}" for i in range(24))
