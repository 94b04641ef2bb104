"""Protobuf messages of the kubelet's pod-resources API (``v1.PodResourcesLister``), the fields the agent reads.

The upstream definition is ``k8s.io/kubelet/pkg/apis/podresources/v1/api.proto``. This module declares a
minimal proto of its own with the same package, service, message names and field numbers, built into a
private descriptor pool at import time (no generated code, no protoc at build time, no pinning of the
protobuf runtime to a code generator's version). Fields left out (devices, memory, dynamic resources,
NUMA topology) are unknown fields to these classes and are skipped when parsing. Written as a .proto::

    syntax = "proto3";
    package v1;

    service PodResourcesLister {
      rpc List(ListPodResourcesRequest) returns (ListPodResourcesResponse) {}
      rpc GetAllocatableResources(AllocatableResourcesRequest) returns (AllocatableResourcesResponse) {}
    }

    message AllocatableResourcesRequest {}
    message AllocatableResourcesResponse { repeated int64 cpu_ids = 2; }
    message ListPodResourcesRequest {}
    message ListPodResourcesResponse { repeated PodResources pod_resources = 1; }
    message PodResources {
      string name = 1;
      string namespace = 2;
      repeated ContainerResources containers = 3;
    }
    message ContainerResources {
      string name = 1;
      repeated int64 cpu_ids = 3;
    }

``tests/unit/agent/test_podresources_pb.py`` checks every field against the kubelet's own descriptor.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = [
    "FILE_NAME",
    "FILE_PROTO",
    "METHOD_GET_ALLOCATABLE",
    "METHOD_LIST",
    "PACKAGE",
    "SERVICE",
    "AllocatableResourcesRequest",
    "AllocatableResourcesResponse",
    "ContainerResources",
    "ListPodResourcesRequest",
    "ListPodResourcesResponse",
    "PodResources",
]

PACKAGE = "v1"
SERVICE = f"{PACKAGE}.PodResourcesLister"
METHOD_LIST = f"/{SERVICE}/List"
METHOD_GET_ALLOCATABLE = f"/{SERVICE}/GetAllocatableResources"
# Our own file name: the messages are the kubelet's, the file is not (nothing imports it by name).
FILE_NAME = "pinserve/agent/podresources/v1/api.proto"

_F = descriptor_pb2.FieldDescriptorProto
_STRING = (_F.LABEL_OPTIONAL, _F.TYPE_STRING)
_INT64_LIST = (_F.LABEL_REPEATED, _F.TYPE_INT64)

#: message -> fields as (name, number, (label, type), message type or "").
_MESSAGES: dict[str, tuple[tuple[str, int, tuple[int, int], str], ...]] = {
    "AllocatableResourcesRequest": (),
    "AllocatableResourcesResponse": (("cpu_ids", 2, _INT64_LIST, ""),),
    "ListPodResourcesRequest": (),
    "ListPodResourcesResponse": (
        ("pod_resources", 1, (_F.LABEL_REPEATED, _F.TYPE_MESSAGE), "PodResources"),
    ),
    "PodResources": (
        ("name", 1, _STRING, ""),
        ("namespace", 2, _STRING, ""),
        ("containers", 3, (_F.LABEL_REPEATED, _F.TYPE_MESSAGE), "ContainerResources"),
    ),
    "ContainerResources": (
        ("name", 1, _STRING, ""),
        ("cpu_ids", 3, _INT64_LIST, ""),
    ),
}
_METHODS = (
    ("List", "ListPodResourcesRequest", "ListPodResourcesResponse"),
    ("GetAllocatableResources", "AllocatableResourcesRequest", "AllocatableResourcesResponse"),
)


def _file_proto() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name=FILE_NAME, package=PACKAGE, syntax="proto3")
    for message, fields in _MESSAGES.items():
        desc = proto.message_type.add(name=message)
        for name, number, (label, kind), type_name in fields:
            field = desc.field.add(name=name, number=number, label=label, type=kind, json_name=_json_name(name))
            if type_name:
                field.type_name = f".{PACKAGE}.{type_name}"
    service = proto.service.add(name=SERVICE.rpartition(".")[2])
    for name, request, response in _METHODS:
        service.method.add(name=name, input_type=f".{PACKAGE}.{request}", output_type=f".{PACKAGE}.{response}")
    return proto


def _json_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


FILE_PROTO = _file_proto()
_POOL = descriptor_pool.DescriptorPool()
_POOL.AddSerializedFile(FILE_PROTO.SerializeToString())


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


AllocatableResourcesRequest: Any = _message("AllocatableResourcesRequest")
AllocatableResourcesResponse: Any = _message("AllocatableResourcesResponse")
ListPodResourcesRequest: Any = _message("ListPodResourcesRequest")
ListPodResourcesResponse: Any = _message("ListPodResourcesResponse")
PodResources: Any = _message("PodResources")
ContainerResources: Any = _message("ContainerResources")
