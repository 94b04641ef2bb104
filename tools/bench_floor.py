"""The framework's floor for the operator benchmark: a minimal kopf operator, kopf defaults.

On ModelServer creation it server-side-applies the three children pinserve makes (ConfigMap, Service,
Deployment, rendered by pinserve's pure render functions against an imaginary node) and nothing else:
no indices, no status, no watches of its own. Every HTTP request the process makes (kopf's own
included: its watches, finalizer and progress patches, events) is counted by verb and written to
PINSERVE_STATS_FILE each second, as pinserve writes its own there, with the event loop's lag and GC pauses.

Usage: python -m tools.bench_floor --namespace NS   (KUBECONFIG names the cluster)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import kopf

from pinserve.kube import Credentials, KubeApi
from pinserve.loopwatch import LoopWatch
from pinserve.offline import render_documents

# kopf's own requests (aiohttp is its client); the children's applies go through pinserve's KubeApi (httpx) and
# are counted there: the stats file's "requests" is the sum of both, "own" the applies alone.
KOPF_REQUESTS: Counter[str] = Counter()
_original_request = aiohttp.ClientSession._request


async def _counted_request(self: aiohttp.ClientSession, method: str, *args: Any, **kwargs: Any) -> Any:
    params = kwargs.get("params") or {}
    watching = isinstance(params, Mapping) and str(params.get("watch", "")).lower() in ("true", "1")
    KOPF_REQUESTS["WATCH" if watching else method.upper()] += 1
    return await _original_request(self, method, *args, **kwargs)


aiohttp.ClientSession._request = _counted_request  # type: ignore[method-assign]

_API: KubeApi | None = None
_LOOP = LoopWatch()  # the same event-loop lag and GC figures pinserve writes


@kopf.on.startup()
async def startup(**_: Any) -> None:
    global _API  # noqa: PLW0603  (the floor is one module-level operator)
    _API = KubeApi(Credentials.from_kubeconfig())
    _LOOP.start()
    stats = os.environ.get("PINSERVE_STATS_FILE")
    if stats:
        asyncio.create_task(_write_stats_forever(Path(stats)))  # noqa: RUF006  (lives as long as the process)


async def _write_stats_forever(path: Path) -> None:
    while True:
        tmp = path.with_suffix(".tmp")
        own = Counter(_API.requests) if _API else Counter()
        tmp.write_text(json.dumps({"requests": dict(KOPF_REQUESTS + own),
                                   "own": dict(own), "reconciles": 0,
                                   "loop": _LOOP.summary()}))
        tmp.replace(path)
        await asyncio.sleep(1)


@kopf.on.create("pinserve.io", "v1alpha1", "modelservers")
async def create_children(body: kopf.Body, **_: Any) -> None:
    assert _API is not None
    docs, _notes = render_documents([dict(body)], None)
    for doc in docs:
        if doc["kind"] in ("ConfigMap", "Service", "Deployment"):
            await _API.apply(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--namespace", required=True)
    args = parser.parse_args()
    kopf.configure(verbose=False)
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(standalone=True, namespaces=[args.namespace], liveness_endpoint=None)


if __name__ == "__main__":
    main()
