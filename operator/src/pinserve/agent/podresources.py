"""Each container's exclusive CPUs from the kubelet's pod-resources API, the policy from its checkpoint.

The kubelet serves ``v1.PodResourcesLister`` (gRPC) on ``<kubelet root>/pod-resources/kubelet.sock``:
``List`` gives, per pod (namespace, name) and container, the CPUs the CPU manager gave it exclusively
(none for a container in the shared pool), ``GetAllocatableResources`` the CPUs it may hand out (empty
under the ``none`` policy). It is live, and it is all the agent needs of the kubelet's directory besides
the policy, which the API does not name and which the agent keeps reading from ``cpu_manager_state``.

:class:`CpuReader` reads both and merges them into one :class:`CpuManagerState`: the policy from the
checkpoint, the assignments from the socket (``source`` ``pod-resources``). Without a usable socket
(none configured, missing, refusing, erroring) the checkpoint's own entries are used as before
(``source`` ``checkpoint``) and ``pod_resources_error`` says why; the node annotation carries both.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import socket
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from pinserve.agent import podresources_pb as pb
from pinserve.agent.cpumanager import (
    POLICY_NONE,
    POLICY_STATIC,
    POLICY_UNKNOWN,
    SOURCE_CHECKPOINT,
    SOURCE_POD_RESOURCES,
    CpuManagerState,
    FileSignature,
    file_signature,
    read_state,
)
from pinserve.topology.cpuset import format_cpulist

__all__ = [
    "DEFAULT_SOCKET",
    "CpuReader",
    "PodResourcesClient",
    "PodResourcesError",
    "PodResourcesMissingError",
    "PodResourcesSnapshot",
    "combine",
]

log = logging.getLogger("pinserve.agent")

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
#: The kubelet rate-limits the API (100 requests/s, burst 10, shared by every client on the node).
DEFAULT_MIN_INTERVAL = 0.5

PodCpus = Mapping[tuple[str, str], Mapping[str, frozenset[int]]]


class PodResourcesError(Exception):
    """The pod-resources API could not be read; the message says why and what to check."""


class PodResourcesMissingError(PodResourcesError):
    """There is no socket at the configured path (a kubelet without it, or not mounted here)."""


@dataclass(frozen=True)
class PodResourcesSnapshot:
    #: (namespace, pod name) -> container name -> exclusive CPUs (empty: the container runs in the shared pool).
    pods: PodCpus
    #: The CPUs the CPU manager may assign exclusively; None when the kubelet does not serve the call.
    allocatable: frozenset[int] | None

    @property
    def exclusive(self) -> frozenset[int]:
        """Every CPU some container holds exclusively."""
        return frozenset().union(*(cpus for containers in self.pods.values() for cpus in containers.values()))


def _cpus(ids: Any) -> frozenset[int]:
    return frozenset(int(cpu) for cpu in ids)


class PodResourcesClient:
    """A synchronous client of one kubelet's pod-resources socket (the agent calls it from a worker thread)."""

    def __init__(self, path: str, *, timeout: float = 5.0, min_interval: float = DEFAULT_MIN_INTERVAL) -> None:
        self.path = path
        self.timeout = timeout
        self.min_interval = min_interval
        self._channel: grpc.Channel | None = None
        self._last: tuple[float, PodResourcesSnapshot] | None = None

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _call(self, method: str, request: Any, response: Any) -> Any:
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix://{os.path.abspath(self.path)}")
        call = self._channel.unary_unary(
            method, request_serializer=lambda m: m.SerializeToString(), response_deserializer=response.FromString
        )
        return call(request, timeout=self.timeout)

    def snapshot(self, *, force: bool = False) -> PodResourcesSnapshot:
        """List every pod's CPUs and the allocatable set; a result younger than ``min_interval`` is reused
        unless ``force``. Raises :class:`PodResourcesError` (``PodResourcesMissingError``: no socket)."""
        now = time.monotonic()
        if not force and self._last is not None and now - self._last[0] < self.min_interval:
            return self._last[1]
        self._check_path()
        try:
            listed = self._call(pb.METHOD_LIST, pb.ListPodResourcesRequest(), pb.ListPodResourcesResponse)
            allocatable: frozenset[int] | None
            try:
                answer = self._call(pb.METHOD_GET_ALLOCATABLE, pb.AllocatableResourcesRequest(),
                                    pb.AllocatableResourcesResponse)
                allocatable = _cpus(answer.cpu_ids)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                allocatable = None  # kubelets before 1.21 (or the gate off): List alone still answers
        except grpc.RpcError as exc:
            self.close()  # a new channel next time: no reconnect backoff carried over a kubelet restart
            self._last = None
            raise PodResourcesError(self._explain(exc)) from None
        pods: dict[tuple[str, str], dict[str, frozenset[int]]] = {}
        for pod in listed.pod_resources:
            pods[(str(pod.namespace), str(pod.name))] = {str(c.name): _cpus(c.cpu_ids) for c in pod.containers}
        result = PodResourcesSnapshot(pods, allocatable)
        self._last = (now, result)
        return result

    def _check_path(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise PodResourcesMissingError(
                f"{self.path} does not exist: the kubelet's pod-resources socket is not mounted here "
                "(or this kubelet serves none)"
            ) from None
        except OSError as exc:
            raise PodResourcesError(f"cannot reach {self.path}: {exc.strerror or exc}{_hint(exc.errno)}") from None
        if not stat.S_ISSOCK(st.st_mode):
            raise PodResourcesError(f"{self.path} is not a socket, so not the kubelet's pod-resources API")

    def _explain(self, exc: grpc.RpcError) -> str:
        code, details = exc.code(), exc.details() or ""
        where = f"the kubelet's pod-resources API at {self.path}"
        if code == grpc.StatusCode.UNAVAILABLE:
            return f"cannot connect to {where}: {_connect_error(self.path) or details}"
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return f"{where} does not serve {pb.SERVICE}/List (a kubelet older than 1.20?): {details}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"{where} did not answer within {self.timeout:g}s"
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return f"{where} refused the call (rate limit, shared by every client on the node): {details}"
        return f"{where} failed: {code.name}: {details}"


def _hint(number: int | None) -> str:
    if number in (errno.EACCES, errno.EPERM):
        return (" (the kubelet creates the socket root-owned, mode 0755, in a 0750 directory: only uid 0 may "
                "connect; see agent.podSecurityContext)")
    return ""


def _connect_error(path: str) -> str | None:
    """Why a plain connect to ``path`` fails (gRPC's own message hides the errno), or None if it works."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2)
        probe.connect(path)
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            return "connection refused: nothing listens on the socket (the kubelet is not running, or restarting)"
        return f"{exc.strerror or exc}{_hint(exc.errno)}"
    finally:
        probe.close()
    return None


def combine(checkpoint: CpuManagerState, live: PodResourcesSnapshot | None, error: str | None,
            all_cpus: frozenset[int]) -> CpuManagerState:
    """One view: the checkpoint's policy with the socket's assignments, or the checkpoint alone (``live`` None).

    With the socket the shared pool is every CPU no container holds exclusively (what the kubelet's
    ``defaultCpuSet`` is); under ``none`` it is left empty, as the kubelet's checkpoint leaves it.
    """
    if live is None:
        state = dataclasses.replace(checkpoint, source=SOURCE_CHECKPOINT, pod_resources_error=error)
        if checkpoint.replaced and checkpoint.known:
            # A single-file mount of a checkpoint the kubelet has since replaced: the policy holds, the
            # assignments are those of the day the agent started.
            note = (f"{checkpoint.path} was replaced by the kubelet since the agent started (a single-file "
                    "mount keeps the old file): its CPU assignments are out of date and not used")
            return dataclasses.replace(state, default_cpus=None, entries={}, legacy_entries={},
                                       reason="; ".join(filter(None, (checkpoint.reason, note))))
        return state
    policy, reason = checkpoint.policy, checkpoint.reason
    if checkpoint.known and live.allocatable is not None:
        implied = POLICY_STATIC if live.allocatable else POLICY_NONE
        if implied != policy:
            policy = POLICY_UNKNOWN
            seen = f"allocatable CPUs {format_cpulist(live.allocatable)}" if live.allocatable else "no allocatable CPUs"
            reason = (f"{checkpoint.path or 'cpu_manager_state'} says {checkpoint.policy!r} but the kubelet's "
                      f"pod-resources API reports {seen} (policy {implied!r}): the checkpoint seen here is stale "
                      "(the kubelet was restarted with another policy); restart the agent's pod")
    default: frozenset[int] | None = None
    if policy == POLICY_STATIC:
        default = all_cpus - live.exclusive
    elif policy == POLICY_NONE:
        default = frozenset()
    return CpuManagerState(
        policy, default_cpus=default, reason=reason, path=checkpoint.path,
        source=SOURCE_POD_RESOURCES, pod_cpus=live.pods, allocatable=live.allocatable,
    )


class CpuReader:
    """The checkpoint file (re-read only when it changed) and the pod-resources socket, merged per read."""

    def __init__(self, state_path: str, socket_path: str | None, *, timeout: float = 5.0,
                 min_interval: float = DEFAULT_MIN_INTERVAL) -> None:
        self.state_path = state_path
        self.client = PodResourcesClient(socket_path, timeout=timeout, min_interval=min_interval) if socket_path \
            else None
        self._signature: FileSignature | None = None
        self._checkpoint: CpuManagerState | None = None
        self._said: tuple[str, str | None] | None = None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def checkpoint(self, *, force: bool = False) -> CpuManagerState:
        signature = file_signature(self.state_path)
        if force or self._checkpoint is None or signature is None or signature != self._signature:
            self._checkpoint = read_state(self.state_path)
            self._signature = signature
        return self._checkpoint

    def read(self, all_cpus: frozenset[int], *, force: bool = False) -> CpuManagerState:
        """The current view; ``force`` re-reads the file and skips the socket's short reuse window."""
        checkpoint = self.checkpoint(force=force)
        live: PodResourcesSnapshot | None = None
        error: str | None = None
        if self.client is not None:
            try:
                live = self.client.snapshot(force=force)
            except PodResourcesError as exc:
                error = str(exc)
        state = combine(checkpoint, live, error, all_cpus)
        self._say(state)
        return state

    def _say(self, state: CpuManagerState) -> None:
        said = (state.source, state.pod_resources_error)
        if said == self._said:
            return
        self._said = said
        if state.source == SOURCE_POD_RESOURCES:
            log.info("CPU assignments from the kubelet's pod-resources API (%s); policy from %s",
                     self.client.path if self.client else "", self.state_path)
        elif state.pod_resources_error is None:
            log.info("CPU assignments and policy from %s (no pod-resources socket configured)", self.state_path)
        else:
            log.warning("CPU assignments from %s instead of the pod-resources API: %s",
                        self.state_path, state.pod_resources_error)
