"""Operator start-up and shutdown: kopf settings, the controller, the periodic resync."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import kopf
from aiohttp import web

from pinserve import kubelogin, metrics
from pinserve.controller import Controller
from pinserve.handlers import state, watches
from pinserve.informer import Informer, watch_count
from pinserve.kube import Credentials, KubeApi
from pinserve.loopwatch import LoopWatch
from pinserve.peering import Follower
from pinserve.settings import Settings

log = logging.getLogger("pinserve")
# Started with the operator, stopped at cleanup: the metrics endpoint and the peering follower.
_METRICS: web.AppRunner | None = None
_FOLLOWER: asyncio.Task[None] | None = None
# The event loop's lag and the garbage collector's pauses, for /metrics and the stats file.
_LOOP: LoopWatch | None = None
# How long a status that only says "progressing" may wait to be written (pinserve.controller.Controller):
# a start that settles within it costs one status write. PINSERVE_STATUS_HOLD_SECONDS overrides it (0: off).
STATUS_COALESCE_SECONDS = 10.0
RESYNC_CHECKS = 6  # looks for ModelServers due a resync this many times per resync period


@kopf.on.login()
async def login(**_: Any) -> kopf.ConnectionInfo:
    """The same configuration as pinserve's own client, read when called: in-cluster first, then $KUBECONFIG.

    kopf calls this again on a 401 and when the returned expiration (an exec plugin's token) comes near.
    """
    return await kubelogin.connection_info(Credentials.from_environment().config)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Bookkeeping goes to annotations under our prefix, never into status.
    settings.persistence.finalizer = "pinserve.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="pinserve.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="pinserve.io", key="last-handled-configuration"
    )
    # kopf would mirror its log lines into Events: one API write each. We post our own.
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    operator_settings = Settings.from_env()
    # The informer's watches (one per namespaced kind and watched namespace, one of nodes) each hold a connection.
    streams = watch_count(operator_settings.namespaces)
    state.CONTROLLER = Controller(api=KubeApi(Credentials.from_environment(), watches=streams),
                                  settings=operator_settings,
                                  status_coalesce=float(os.environ.get("PINSERVE_STATUS_HOLD_SECONDS",
                                                                       STATUS_COALESCE_SECONDS)))
    state.SETTLE_SECONDS = float(os.environ.get("PINSERVE_SETTLE_SECONDS", state.SETTLE_SECONDS))
    _watch_loop()
    # Peering first: a replica that does not lead must know it before the first listing triggers reconciles.
    await _start_peering(settings, state.CONTROLLER.api, operator_settings.namespaces)
    await _start_informer(state.CONTROLLER.api, operator_settings.namespaces)
    state.RESYNC_TASK = asyncio.create_task(_resync_forever(operator_settings.resync_seconds))
    await _start_metrics(operator_settings)
    stats_file = os.environ.get("PINSERVE_STATS_FILE")
    if stats_file:
        state.STATS_TASK = asyncio.create_task(_write_stats_forever(Path(stats_file)))
    log.info("pinserve started: %s", operator_settings)


def _watch_loop() -> None:
    global _LOOP  # noqa: PLW0603  (module state by design)
    _LOOP = LoopWatch()
    _LOOP.start()


async def _start_informer(api: KubeApi, namespaces: tuple[str, ...]) -> None:
    """ModelServers, nodes and the children pinserve owns (filtered by the API server); listed before any
    reconcile may run: every reconcile waits for ``primed``, so none judges from an unlisted cache (nor plans
    against nodes not yet listed).
    """
    state.INFORMER = Informer(api, watches.changed, namespaces=namespaces)
    state.INFORMER.start()
    while not await state.INFORMER.wait_primed(timeout=30):
        log.warning("still listing the objects pinserve owns (%s)", state.INFORMER.sizes())
    log.info("caches primed: %s", state.INFORMER.sizes())


async def _start_peering(settings: kopf.OperatorSettings, api: KubeApi, namespaces: tuple[str, ...]) -> None:
    """With kopf peering on, reconcile only while this replica leads (see pinserve.peering)."""
    global _FOLLOWER  # noqa: PLW0603  (module state by design)
    if settings.peering.standalone:
        return
    state.LEADING = False
    follower = Follower(api=api, name=settings.peering.name, identity=os.environ.get("POD_ID", ""),
                        priority=settings.peering.priority, clusterwide=settings.peering.clusterwide,
                        namespaces=namespaces, on_change=state.set_leading)
    _FOLLOWER = asyncio.create_task(follower.run())


def sample() -> metrics.Sample:
    controller = state.CONTROLLER
    queue = state.QUEUE
    return metrics.Sample(
        reconciles=metrics.counts(controller.results) if controller else {},
        errors=metrics.counts(controller.errors) if controller else {},
        requests=metrics.counts(controller.api.requests) if controller else {},
        triggers=state.triggers(),
        latency=state.LATENCY,
        queue_active=queue.pending() if queue else 0,
        queue_scheduled=queue.scheduled() if queue else 0,
        queue_wait=queue.waits if queue else {},
        modelservers=len(state.modelserver_keys()),
        leader=state.LEADING,
        loop_lag=_LOOP.lag if _LOOP else None,
        gc_collections={str(g): n for g, n in _LOOP.gc_collections.items()} if _LOOP else {},
        gc_seconds={str(g): s for g, s in _LOOP.gc_seconds.items()} if _LOOP else {},
    )


async def _start_metrics(settings: Settings) -> None:
    global _METRICS  # noqa: PLW0603  (module state by design)
    if settings.metrics_port > 0:
        _METRICS = await metrics.serve(sample, settings.metrics_host, settings.metrics_port)
        log.info("metrics at http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)


async def _resync_forever(interval: int) -> None:
    """Level-based safety net: re-evaluate, from the caches (no API reads), each ModelServer that nothing has
    reconciled for ``interval`` seconds. Checked every sixth of it, so each is re-evaluated 1 to 1 1/6
    intervals after its last reconcile."""
    while True:
        await asyncio.sleep(max(interval / RESYNC_CHECKS, 1.0))
        try:
            state.resync_stale(interval)
        except Exception:  # the loop must survive any single failure
            log.exception("periodic resync failed")


async def _write_stats_forever(path: Path) -> None:
    """For benchmarks and debugging: the operator's own API requests by verb, and reconciles."""
    while True:
        controller = state.CONTROLLER
        if controller is not None:
            tmp = path.with_suffix(".tmp")
            cached = state.INFORMER.sizes() if state.INFORMER is not None else {}
            tmp.write_text(json.dumps({"requests": dict(controller.api.requests),
                                       "reconciles": controller.reconciles, "triggers": state.triggers(),
                                       "cached": cached, "loop": _LOOP.summary() if _LOOP else {},
                                       "timings": _timings()}))
            tmp.replace(path)
        await asyncio.sleep(1)


def _timings() -> dict[str, dict[str, float]]:
    """Quantiles (from the histograms) of the queue's waits by run and of the reconciles themselves."""
    queue = state.QUEUE
    histograms = {f"wait {run}": h for run, h in (queue.waits.items() if queue else ())}
    histograms["reconcile"] = state.LATENCY
    return {name: {"count": h.count, "p50": h.quantile(0.5), "p99": h.quantile(0.99)}
            for name, h in histograms.items()}


@kopf.on.cleanup()
async def shutdown(**_: Any) -> None:
    global _METRICS, _FOLLOWER, _LOOP  # noqa: PLW0603  (module state by design)
    if _METRICS is not None:
        await _METRICS.cleanup()
        _METRICS = None
    if _LOOP is not None:
        await _LOOP.stop()
        _LOOP = None
    for task in (state.RESYNC_TASK, state.STATS_TASK, _FOLLOWER):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    _FOLLOWER = None
    if state.INFORMER is not None:
        await state.INFORMER.stop()
    if state.CONTROLLER is not None:
        await state.CONTROLLER.api.close()
    state.reset()
