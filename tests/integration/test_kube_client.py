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
