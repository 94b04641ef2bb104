"""A kubelet's pod-resources API for tests: a real gRPC server on a unix socket, speaking the kubelet's messages.

The messages are built from the kubelet's own descriptor (``tests/data/kubelet-podresources``), not from
pinserve's minimal one, and every container also carries devices, memory and dynamic resources, so a client
is tested against what a kubelet really sends. Like the kubelet, ``List`` names pods by namespace and name,
and gives only exclusive CPUs (none for a container in the shared pool).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from pinserve.topology.cpuset import parse_cpulist

DESCRIPTOR = Path(__file__).resolve().parent / "data" / "kubelet-podresources" / "api-v0.34.4.desc"
SERVICE = "v1.PodResourcesLister"


def kubelet_file_proto() -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString(DESCRIPTOR.read_bytes())


_POOL = descriptor_pool.DescriptorPool()
_POOL.AddSerializedFile(DESCRIPTOR.read_bytes())


def kubelet_message(name: str) -> Any:
    """A message class of the kubelet's own ``v1`` package."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"v1.{name}"))


class FakeKubelet:
    """``v1.PodResourcesLister`` on ``socket``: ``pods`` maps (namespace, name) to {container: CPU list}."""

    def __init__(self, socket: Path, *, allocatable: str = "1-15", serve_allocatable: bool = True) -> None:
        self.socket = socket
        self.pods: dict[tuple[str, str], dict[str, str]] = {}
        self.allocatable = allocatable
        self.serve_allocatable = serve_allocatable
        #: Answer every call with this status (None: answer normally).
        self.fail_with: grpc.StatusCode | None = None
        #: Seconds to wait before answering.
        self.delay = 0.0
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None

    def set_pod(self, namespace: str, name: str, containers: Mapping[str, str]) -> None:
        with self._lock:
            self.pods[(namespace, name)] = dict(containers)

    def remove_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            self.pods.pop((namespace, name), None)

    def _answer(self, method: str, context: grpc.ServicerContext) -> None:
        self.calls[method] += 1
        if self.delay:
            time.sleep(self.delay)
        if self.fail_with is not None:
            context.abort(self.fail_with, f"fake kubelet: {method} fails with {self.fail_with.name}")

    def _list(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._answer("List", context)
        response = kubelet_message("ListPodResourcesResponse")()
        with self._lock:
            pods = {key: dict(value) for key, value in self.pods.items()}
        for (namespace, name), containers in sorted(pods.items()):
            pod = response.pod_resources.add(name=name, namespace=namespace)
            for container, cpus in containers.items():
                entry = pod.containers.add(name=container)
                entry.cpu_ids.extend(sorted(parse_cpulist(cpus)) if cpus else [])
                # What a kubelet sends besides the CPUs: fields pinserve's messages do not declare.
                device = entry.devices.add(resource_name="example.com/nic", device_ids=["nic-0"])
                device.topology.nodes.add(ID=0)
                entry.memory.add(memory_type="memory", size=1 << 30).topology.nodes.add(ID=0)
                entry.dynamic_resources.add(claim_name="claim", claim_namespace=namespace)
        return response

    def _allocatable(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._answer("GetAllocatableResources", context)
        response = kubelet_message("AllocatableResourcesResponse")()
        response.cpu_ids.extend(sorted(parse_cpulist(self.allocatable)) if self.allocatable else [])
        response.devices.add(resource_name="example.com/nic", device_ids=["nic-0", "nic-1"])
        return response

    def _handler(self, behaviour: Any, request: str) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=kubelet_message(request).FromString,
            response_serializer=lambda message: message.SerializeToString(),
        )

    def start(self) -> FakeKubelet:
        methods = {"List": self._handler(self._list, "ListPodResourcesRequest")}
        if self.serve_allocatable:
            methods["GetAllocatableResources"] = self._handler(self._allocatable, "AllocatableResourcesRequest")
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None


@contextmanager
def fake_kubelet(socket: Path, **options: Any) -> Iterator[FakeKubelet]:
    kubelet = FakeKubelet(socket, **options).start()
    try:
        yield kubelet
    finally:
        kubelet.stop()
