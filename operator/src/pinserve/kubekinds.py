"""The kinds pinserve reads and writes, as lightkube generic resources: their bodies are plain dicts.

lightkube builds every path, query and body from these classes (group, version, plural, scope and the
``status`` subresource); pinserve never spells a URL. They are made here rather than with
``lightkube.generic_resource.create_namespaced_resource``, which registers each class in lightkube's global
registry, where the core kinds (ConfigMap, Pod, ...) belong to lightkube's own typed models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from lightkube.core.resource import ApiInfo, Resource, ResourceDef
from lightkube.generic_resource import (
    GenericGlobalResource,
    GenericGlobalStatus,
    GenericNamespacedResource,
    GenericNamespacedStatus,
)

from pinserve.api import GROUP, KIND, PLURAL, VERSION

VERBS = ["delete", "deletecollection", "get", "global_list", "global_watch", "list", "patch", "post", "put",
         "watch"]

Kind = type[Resource]  # a generic resource (a dict subclass) or its status subresource


def _kind(group: str, version: str, kind: str, plural: str, *, namespaced: bool = True) -> Kind:
    resource = ResourceDef(group, version, kind)
    status: dict[str, Any] = {"_api_info": ApiInfo(resource=resource, parent=resource, plural=plural,
                                                     verbs=["get", "patch", "put"], action="status")}
    status_class = type(f"{kind}Status", (GenericNamespacedStatus if namespaced else GenericGlobalStatus,), status)
    main: dict[str, Any] = {"_api_info": ApiInfo(resource=resource, plural=plural, verbs=VERBS),
                            "Status": status_class}
    return type(kind, (GenericNamespacedResource if namespaced else GenericGlobalResource,), main)


def make(cls: Kind, body: Mapping[str, Any]) -> Resource:
    """An object of ``cls`` holding (a shallow copy of) ``body``."""
    obj: Resource = cast(Any, cls)(body)
    return obj


KINDS: dict[str, Kind] = {k.__name__: k for k in [
    _kind("", "v1", "ConfigMap", "configmaps"),
    _kind("", "v1", "Service", "services"),
    _kind("", "v1", "Pod", "pods"),
    _kind("", "v1", "Event", "events"),
    _kind("", "v1", "Node", "nodes", namespaced=False),
    _kind("apps", "v1", "Deployment", "deployments"),
    _kind("batch", "v1", "Job", "jobs"),
    _kind(GROUP, VERSION, KIND, PLURAL),
    # kopf's peering objects (leader election between operator replicas: pinserve.peering).
    _kind("kopf.dev", "v1", "ClusterKopfPeering", "clusterkopfpeerings", namespaced=False),
    _kind("kopf.dev", "v1", "KopfPeering", "kopfpeerings"),
]}


def resource(kind: str, sub: str = "") -> Kind:
    """The class of ``kind`` (``sub="status"``: its status subresource)."""
    try:
        found = KINDS[kind]
    except KeyError:
        raise ValueError(f"pinserve.kubekinds does not know the kind {kind!r}") from None
    if not sub:
        return found
    if sub != "status":
        raise ValueError(f"pinserve.kubekinds: no subresource {sub!r} of {kind}")
    status: Kind = found.Status  # type: ignore[attr-defined]
    return status


def namespaced(cls: Kind) -> bool:
    return issubclass(cls, (GenericNamespacedResource, GenericNamespacedStatus))
