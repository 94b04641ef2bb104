"""The node agent's run loop: publish the node's topology and the cpusets of pinserve pods on it.

Three activities share one lock and one view (topology, CPU manager state, pods on the node):

* a pod watch (``fieldSelector=spec.nodeName=<node>``, ``labelSelector=app.kubernetes.io/managed-by=pinserve``)
  that lists once, then follows events and relists when the watch expires (410) or breaks;
* a look at the CPU assignments every few seconds: the kubelet's pod-resources API (one ``List``), and
  the checkpoint file (inode, size, mtime; re-read only when it changed), republishing the node and every
  pod when what they say changed (:class:`pinserve.agent.podresources.CpuReader`);
* a full pass every ``interval`` seconds (topology re-read, checkpoint re-read, node GET) that repairs
  anything edited away by hand.

Every write is a merge patch computed by :mod:`pinserve.agent.publisher` against the object's current
content, so a steady state issues reads (the periodic node GET) but no writes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from pinserve.agent.agentapi import WRITE_VERBS, AgentApi, write_count
from pinserve.agent.cpumanager import CpuManagerState
from pinserve.agent.podresources import CpuReader
from pinserve.agent.publisher import POD_LABEL_SELECTOR, node_metadata, node_patch, on_node, pod_patch
from pinserve.kube import ApiError
from pinserve.topology import read_cpuinfo, read_topology
from pinserve.topology.model import Topology

__all__ = [
    "WRITE_VERBS",
    "AgentApi",
    "AgentConfig",
    "NodeAgent",
    "PassResult",
    "load_topology",
    "write_count",
]

log = logging.getLogger("pinserve.agent")

# A network error or an API server restart: wait, then relist. Doubling up to a minute.
_BACKOFF_FIRST = 1.0
_BACKOFF_MAX = 60.0
# A pod gone (404), renamed to a new UID (422: UID immutable) or conflicting (409): nothing to fix.
_POD_GONE = frozenset({404, 409, 422})


@dataclass(frozen=True)
class AgentConfig:
    node: str
    sysfs_root: str = "/"
    state_path: str = "/var/lib/kubelet/cpu_manager_state"
    #: The kubelet's pod-resources socket; None: CPU assignments from the checkpoint only.
    pod_resources_socket: str | None = None
    pod_resources_timeout: float = 5.0
    #: Where /proc/cpuinfo lives; None: beside ``sysfs_root`` when there is one there, else ``/``.
    proc_root: str | None = None
    interval: float = 300.0
    state_interval: float = 5.0
    watch_timeout: int = 300


def load_topology(sysfs_root: str | Path, proc_root: str | Path | None = None) -> Topology:
    """Read the topology; the model name and ISA flags come from ``proc_root``'s ``proc/cpuinfo``.

    In the DaemonSet the host's sysfs is mounted at ``/host/sys`` but /proc is the container's own, whose
    cpuinfo shows the host's CPUs: with no ``proc/cpuinfo`` beside the sysfs root, ``/`` is read.
    """
    topology = read_topology(sysfs_root)
    root = Path(sysfs_root)
    fsroot = root if (root / "sys" / "devices" / "system" / "cpu").is_dir() else root.parent
    if proc_root is None:
        if (fsroot / "proc" / "cpuinfo").is_file():
            return topology  # read_topology read this one
        proc_root = "/"
    model, flags = read_cpuinfo(proc_root)
    return dataclasses.replace(topology, model_name=model, isa_flags=flags)


@dataclass
class PassResult:
    """What one full pass did."""

    node_found: bool = True
    node_patched: bool = False
    pods_seen: int = 0
    pods_patched: int = 0
    writes: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.node_found and not self.errors

    def summary(self) -> str:
        return (
            f"node {'patched' if self.node_patched else 'unchanged' if self.node_found else 'NOT FOUND'}, "
            f"pods patched {self.pods_patched}/{self.pods_seen}, api-writes={self.writes}"
            + (f", errors: {'; '.join(self.errors)}" if self.errors else "")
        )


class NodeAgent:
    """Publishes one node's CPU topology and its pinserve pods' cpusets through ``api``."""

    def __init__(self, api: AgentApi, config: AgentConfig, *, topology: Topology | None = None) -> None:
        self.api = api
        self.config = config
        self.topology: Topology = topology if topology is not None else load_topology(
            config.sysfs_root, config.proc_root
        )
        self.cpu = CpuReader(config.state_path, config.pod_resources_socket, timeout=config.pod_resources_timeout)
        self.state: CpuManagerState = self.cpu.read(self.topology.cpus, force=True)
        # The node metadata last found or made right on the Node: a republish with the same skips the GET.
        self._node_synced: tuple[dict[str, str], dict[str, str]] | None = None
        self.pods: dict[str, dict[str, Any]] = {}  # by UID, as last seen (list, watch or our own patch)
        self._lock = asyncio.Lock()
        # Set when the checkpoint changed and the node and pods have not all been republished since.
        self._republish = False
        self._field_selector = f"spec.nodeName={config.node}"

    # -- local inputs ---------------------------------------------------------------------------------

    def close(self) -> None:
        self.cpu.close()

    async def refresh_state(self, *, force: bool = False) -> bool:
        """Look at the CPU assignments again (``force``: re-read everything); True when they changed.

        The socket is read in a worker thread: a kubelet slow to answer never stalls the pod watch.
        """
        state = await asyncio.to_thread(self.cpu.read, self.topology.cpus, force=force)
        changed = state != self.state
        if changed:
            log.info("cpu manager state now: %s", _brief(state))
            self._republish = True
        self.state = state
        return changed

    def refresh_topology(self) -> bool:
        try:
            topology = load_topology(self.config.sysfs_root, self.config.proc_root)
        except (OSError, ValueError) as exc:
            log.error("cannot re-read the CPU topology (keeping the last one): %s", exc)
            return False
        changed = topology != self.topology
        if changed:
            log.warning("CPU topology changed (CPU hotplug?); republishing")
        self.topology = topology
        return changed

    # -- publishing -----------------------------------------------------------------------------------

    def _writes(self) -> int:
        return write_count(self.api.requests)

    async def sync_node(self) -> bool | None:
        """Put the node's labels and annotations right; True patched, False unchanged, None no node."""
        node = await self.api.get("Node", None, self.config.node)
        if node is None:
            log.error("node %s does not exist; nothing to publish on", self.config.node)
            return None
        wanted = node_metadata(self.topology, self.state)
        patch = node_patch(node, self.topology, self.state)
        if patch is None:
            self._node_synced = wanted
            return False
        await self.api.merge_patch("Node", None, self.config.node, patch)
        self._node_synced = wanted
        log.info("node %s: published %s", self.config.node, sorted(_keys(patch)))
        return True

    async def sync_pod(self, pod: Mapping[str, Any]) -> bool:
        """Annotate one pod with its server container's CPUs if they differ; True when patched."""
        if not on_node(pod, self.config.node):
            return False
        patch = pod_patch(pod, self.state, self.topology)
        if patch is None:
            return False
        meta = pod.get("metadata") or {}
        namespace, name, uid = meta.get("namespace"), str(meta.get("name")), str(meta.get("uid") or "")
        try:
            updated = await self.api.merge_patch("Pod", namespace, name, patch)
        except ApiError as exc:
            if exc.status in _POD_GONE:
                log.info("pod %s/%s changed under us (%s); skipping", namespace, name, exc.reason)
                self.pods.pop(uid, None)
                return False
            raise
        annotations = patch["metadata"].get("annotations", {})
        log.info("pod %s/%s: %s", namespace, name, annotations)
        if uid:
            # Our own patch's answer is the newest view; the MODIFIED event that follows then diffs to nothing.
            self.pods[uid] = updated or dict(pod)
        return True

    async def republish(self) -> None:
        """Sync the node and every cached pod (after the CPU assignments changed); retried until it succeeds.

        The node is fetched only when what the agent publishes on it changed: assignments of pods on the
        node change the shared pool, not necessarily anything else.
        """
        self._republish = True
        if node_metadata(self.topology, self.state) != self._node_synced:
            await self.sync_node()
        _, _, errors = await self.sync_pods()
        self._republish = bool(errors)

    async def sync_pods(self, pods: Iterable[Mapping[str, Any]] | None = None) -> tuple[int, int, list[str]]:
        """Sync ``pods`` (default: the cached ones); returns (seen, patched, errors)."""
        seen = patched = 0
        errors: list[str] = []
        for pod in list(self.pods.values()) if pods is None else list(pods):
            seen += 1
            try:
                patched += await self.sync_pod(pod)
            except ApiError as exc:
                meta = pod.get("metadata") or {}
                errors.append(f"pod {meta.get('namespace')}/{meta.get('name')}: {exc}")
                log.error("%s", errors[-1])
        return seen, patched, errors

    async def list_pods(self) -> str | None:
        """List the pinserve pods on the node into the cache; returns the list's resourceVersion."""
        result = await self.api.list_object(
            "Pod", None, label_selector=POD_LABEL_SELECTOR, field_selector=self._field_selector
        )
        self.pods = {
            str(p["metadata"]["uid"]): p for p in result.get("items") or [] if (p.get("metadata") or {}).get("uid")
        }
        rv = (result.get("metadata") or {}).get("resourceVersion")
        return str(rv) if rv else None

    async def run_once(self) -> PassResult:
        """One full pass: re-read everything local, list pods, patch what differs."""
        async with self._lock:
            before = self._writes()
            result = PassResult()
            self.refresh_topology()
            await self.refresh_state(force=True)
            try:
                patched = await self.sync_node()
                result.node_found = patched is not None
                result.node_patched = bool(patched)
                await self.list_pods()
                result.pods_seen, result.pods_patched, result.errors = await self.sync_pods()
                self._republish = bool(result.errors)
            except ApiError as exc:
                result.errors.append(str(exc))
            result.writes = self._writes() - before
            return result

    # -- the long-running loop ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set. A loop dying of an unexpected error ends the run with that error
        (the process exits non-zero and the DaemonSet restarts it) instead of leaving half an agent."""
        tasks = [
            asyncio.create_task(self._watch_loop(stop), name="pod-watch"),
            asyncio.create_task(self._state_loop(stop), name="state-file"),
            asyncio.create_task(self._resync_loop(stop), name="resync"),
        ]
        stopper = asyncio.create_task(stop.wait(), name="stop")
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = None if task is stopper or task.cancelled() else task.exception()
                if error is not None:
                    log.error("the %s loop failed", task.get_name())
                    raise error
        finally:
            for task in [*tasks, stopper]:
                task.cancel()
            await asyncio.gather(*tasks, stopper, return_exceptions=True)

    async def _resync_loop(self, stop: asyncio.Event) -> None:
        while True:
            try:
                async with self._lock:
                    before = self._writes()
                    self.refresh_topology()
                    await self.refresh_state(force=True)
                    found = await self.sync_node()
                    _, patched, errors = await self.sync_pods()
                    self._republish = bool(errors)
                    log.info(
                        "resync: node %s, pods patched %d/%d, api-writes=%d (total %d)",
                        "missing" if found is None else "patched" if found else "unchanged",
                        patched, len(self.pods), self._writes() - before, self._writes(),
                    )
            except (ApiError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.error("resync failed (retrying in %.0fs): %s", min(self.config.interval, 30), exc)
                if await _sleep(stop, min(self.config.interval, 30.0)):
                    return
                continue
            if await _sleep(stop, self.config.interval):
                return

    async def _state_loop(self, stop: asyncio.Event) -> None:
        while not await _sleep(stop, self.config.state_interval):
            try:
                async with self._lock:
                    if await self.refresh_state() or self._republish:
                        await self.republish()
            except (ApiError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.error("publishing the new CPU manager state failed: %s", exc)

    async def _watch_loop(self, stop: asyncio.Event) -> None:
        backoff = _BACKOFF_FIRST
        rv: str | None = None
        while not stop.is_set():
            try:
                if rv is None:
                    async with self._lock:
                        rv = await self.list_pods()
                        if await self.refresh_state():
                            await self.republish()
                        else:
                            await self.sync_pods()
                async for event in self.api.watch(
                    "Pod", None, label_selector=POD_LABEL_SELECTOR, field_selector=self._field_selector,
                    resource_version=rv, timeout_seconds=self.config.watch_timeout,
                ):
                    rv = await self._handle_event(event, rv)
                    if rv is None:
                        break
                backoff = _BACKOFF_FIRST
            except ApiError as exc:
                rv = None
                if exc.status == 410:  # resourceVersion too old: relist at once
                    continue
                log.warning("pod watch failed (%s); relisting in %.0fs", exc, backoff)
                if await _sleep(stop, backoff):
                    return
                backoff = min(backoff * 2, _BACKOFF_MAX)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                log.warning("pod watch broke (%s); relisting in %.0fs", exc, backoff)
                rv = None
                if await _sleep(stop, backoff):
                    return
                backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _handle_event(self, event: Mapping[str, Any], rv: str | None) -> str | None:
        """Apply one watch event; returns the resourceVersion to resume from (None: relist)."""
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            log.info("pod watch ended by the server: %s", obj.get("message") or obj)
            return None
        meta = obj.get("metadata") or {}
        new_rv = str(meta.get("resourceVersion") or rv or "") or None
        if kind == "BOOKMARK":
            return new_rv
        uid = str(meta.get("uid") or "")
        async with self._lock:
            if kind == "DELETED":
                self.pods.pop(uid, None)
                return new_rv
            cached = self.pods.get(uid)
            if cached is not None and _older(meta, cached.get("metadata") or {}):
                # Queued before our own patch, whose answer is already cached: nothing new in it.
                return new_rv
            self.pods[uid] = dict(obj)
            # The kubelet assigns a container's CPUs before starting it; a pod just seen running may be
            # newer than our last look, so look again (reused if younger than the socket's short window).
            try:
                if await self.refresh_state():
                    await self.republish()
                else:
                    await self.sync_pod(obj)
            except ApiError as exc:
                log.error("pod %s/%s: %s", meta.get("namespace"), meta.get("name"), exc)
        return new_rv


def _older(meta: Mapping[str, Any], than: Mapping[str, Any]) -> bool:
    """Whether ``meta``'s object is an older version than ``than``'s (by resourceVersion).

    resourceVersions are opaque, but every API server in use writes etcd revisions (decimal integers);
    anything else is never called older, which only costs a redundant comparison.
    """
    mine, theirs = str(meta.get("resourceVersion") or ""), str(than.get("resourceVersion") or "")
    return mine.isdecimal() and theirs.isdecimal() and int(mine) < int(theirs)


def _brief(state: CpuManagerState) -> str:
    """The node summary and how many pods the assignments name: a log line, not the whole map."""
    pods = f", {len(state.pod_cpus)} pod(s) listed" if state.pod_cpus else ""
    return f"{state.summary()}{pods}"


def _keys(patch: Mapping[str, Any]) -> list[str]:
    meta = patch.get("metadata") or {}
    return [key for section in ("labels", "annotations") for key in (meta.get(section) or {})]


async def _sleep(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True when ``stop`` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0.0))
    except TimeoutError:
        return False
    return True
