"""Operator start-up and shutdown: kopf settings, the controller, the periodic resync."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from pinserve.controller import Controller
from pinserve.handlers import state
from pinserve.kube import Credentials, KubeApi
from pinserve.settings import Settings

log = logging.getLogger("pinserve")


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
    state.CONTROLLER = Controller(api=KubeApi(Credentials.from_environment()), settings=operator_settings)
    state.RESYNC_TASK = asyncio.create_task(_resync_forever(operator_settings.resync_seconds))
    log.info("pinserve started: %s", operator_settings)


async def _resync_forever(interval: int) -> None:
    """Level-based safety net: re-evaluate every ModelServer from the indices (no API reads)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await state.resync_all()
        except Exception:  # the loop must survive any single failure
            log.exception("periodic resync failed")


@kopf.on.cleanup()
async def shutdown(**_: Any) -> None:
    if state.RESYNC_TASK is not None:
        state.RESYNC_TASK.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await state.RESYNC_TASK
    if state.CONTROLLER is not None:
        await state.CONTROLLER.api.close()
    state.reset()
