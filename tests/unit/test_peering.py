"""Leader election on kopf peering: who leads, seen from one replica (kopf's own rule)."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest

from pinserve.peering import Follower, default_priority, leads

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=datetime.UTC)


def peer(priority: int, seconds_ago: float = 1, lifetime: int = 60) -> dict[str, Any]:
    return {"priority": priority, "lifetime": lifetime,
            "lastseen": (NOW - datetime.timedelta(seconds=seconds_ago)).isoformat()}


def test_alone_or_highest_leads() -> None:
    assert leads({}, "a", -5, NOW)
    assert leads({"a": peer(-5)}, "a", -5, NOW)
    assert leads({"a": peer(-5), "b": peer(-9)}, "a", -5, NOW)
    assert not leads({"a": peer(-9), "b": peer(-5)}, "a", -9, NOW)


def test_equal_priority_pauses_both_as_kopf_does() -> None:
    assert not leads({"a": peer(3), "b": peer(3)}, "a", 3, NOW)


def test_dead_or_leaving_peers_do_not_count() -> None:
    assert leads({"a": peer(-9), "b": peer(-5, seconds_ago=61)}, "a", -9, NOW)
    assert leads({"a": peer(-9), "b": peer(-5, lifetime=0)}, "a", -9, NOW)  # kopf's exit writes lifetime 0
    assert leads({"a": peer(-9), "b": "garbage"}, "a", -9, NOW)


def test_without_an_identity_our_own_priority_is_ours() -> None:
    assert leads({"kopf-chosen": peer(-5)}, "", -5, NOW)
    assert not leads({"kopf-chosen": peer(-5), "b": peer(-1)}, "", -5, NOW)


def test_default_priority_prefers_the_older_replica() -> None:
    older = default_priority(now=1_790_000_000.000, rand=lambda a, b: b)
    newer = default_priority(now=1_790_000_000.001, rand=lambda a, b: a)
    assert older > newer
    assert abs(default_priority(now=1_800_000_000.0)) < 2**53  # exact in JSON


def test_follower_tracks_the_object_and_reports_changes() -> None:
    changes: list[bool] = []

    async def run() -> None:
        follower = Follower(api=None, name="pinserve", identity="b", priority=-9,  # type: ignore[arg-type]
                            on_change=changes.append)
        now = datetime.datetime.now(datetime.UTC)
        live = {"priority": -5, "lifetime": 60, "lastseen": now.isoformat()}
        mine = {"priority": -9, "lifetime": 60, "lastseen": now.isoformat()}
        follower._seen({"type": "ADDED", "object": {"metadata": {"name": "other"}, "status": {}}})
        assert changes == []  # not our peering object
        follower._seen({"type": "ADDED", "object": {"metadata": {"name": "pinserve", "resourceVersion": "1"},
                                                    "status": {"a": live, "b": mine}}})
        assert follower.leading is False
        follower._seen({"type": "MODIFIED", "object": {"metadata": {"name": "pinserve", "resourceVersion": "2"},
                                                       "status": {"b": mine}}})
        assert follower.leading is True
        follower._seen({"type": "DELETED", "object": {"metadata": {"name": "pinserve", "resourceVersion": "3"}}})
        assert follower.leading is False
        if follower._timer is not None:
            follower._timer.cancel()

    asyncio.run(run())
    assert changes == [True, False]


def test_settings_from_the_environment() -> None:
    from pinserve.settings import Settings  # noqa: PLC0415

    default = Settings.from_env({})
    assert (default.peering, default.peering_priority, default.metrics_port) == ("", None, 0)
    chart = Settings.from_env({"PINSERVE_PEERING": "pinserve", "PINSERVE_PEERING_PRIORITY": "",
                               "PINSERVE_METRICS_HOST": "127.0.0.1", "PINSERVE_METRICS_PORT": "9090"})
    assert (chart.peering, chart.peering_priority, chart.metrics_host, chart.metrics_port) == (
        "pinserve", None, "127.0.0.1", 9090)
    assert Settings.from_env({"PINSERVE_PEERING_PRIORITY": "-7"}).peering_priority == -7


class FakeApi:
    def __init__(self, existing: bool, post_status: int = 201) -> None:
        self.existing = existing
        self.post_status = post_status
        self.calls: list[tuple[str, str]] = []

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        self.calls.append(("GET", f"{kind}/{namespace}/{name}"))
        return {"metadata": {"name": name}} if self.existing else None

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        from pinserve.kube import ApiError  # noqa: PLC0415

        meta = obj["metadata"]
        self.calls.append(("POST", f"{obj['apiVersion']}/{obj['kind']}/{meta.get('namespace')}/{meta['name']}"))
        if self.post_status == 409:
            raise ApiError(409, "AlreadyExists", "exists")
        return dict(obj)


@pytest.mark.parametrize(("existing", "post_status", "posts"), [(True, 201, 0), (False, 201, 1), (False, 409, 1)])
def test_ensure_creates_the_peering_object_only_when_missing(existing: bool, post_status: int, posts: int) -> None:
    api = FakeApi(existing, post_status)
    follower = Follower(api=api, name="pinserve", identity="a", priority=1)  # type: ignore[arg-type]
    asyncio.run(follower.ensure())
    assert [m for m, _ in api.calls].count("POST") == posts
    namespaced = FakeApi(False)
    follower = Follower(api=namespaced, name="pinserve", identity="a", priority=1,  # type: ignore[arg-type]
                        clusterwide=False, namespaces=("ml", "serving"))
    asyncio.run(follower.ensure())
    assert [p for m, p in namespaced.calls if m == "POST"] == [
        "kopf.dev/v1/KopfPeering/ml/pinserve", "kopf.dev/v1/KopfPeering/serving/pinserve"]
