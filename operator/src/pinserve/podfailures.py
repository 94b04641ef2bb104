"""Pure: why the server pods are not ready, named — and the kubelet's admission rejections, counted.

``ready_problem`` turns what the pods and the Deployment say into one ``Ready=False`` reason a person
can act on, with a message naming the pod and the cause. Causes are looked for in this order, over
all pods (sorted by name), the first found wins:

=====================  =====================================================================
reason                 seen as
=====================  =====================================================================
ModelConvertFailed     the fetch-model init container failed converting a frozenGraph/keras model
ModelFetchFailed       another init container failure (download, unpack, copy)
ImagePullFailed        a container waiting in ErrImagePull, ImagePullBackOff, InvalidImageName, ...
OOMKilled              a container (of a pod not ready) last terminated OOMKilled
CrashLooping           a container (of a pod not ready) waiting in CrashLoopBackOff
ContainerCreateFailed  CreateContainerConfigError, CreateContainerError, RunContainerError
ReplicaFailure         the Deployment's ReplicaFailure condition (e.g. a quota refused the pods)
AdmissionRejected      pods the kubelet refused (phase Failed, status.reason such as SMTAlignmentError,
                       TopologyAffinityError, OutOfcpu); the ReplicaSet keeps making more
Unschedulable          a pod's PodScheduled=False (no node has room)
PodFailed              another Failed pod (Evicted, node shutdown)
=====================  =====================================================================

Admission rejections pile up (each rejected pod stays Failed), so they are also kept track of in
``status.rejectedPods``: one entry per cause with how many pods were seen, the newest few pods kept
(``KEEP_REJECTED``) and older ones deleted, and one Warning Event per cause when it first appears.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pinserve.fetch.errors import ModelConvertError
from pinserve.redact import redact_text
from pinserve.status import Condition

UNPUBLISHED_DEFAULT_IMAGE = "tensorflow/serving:mkl"
PUBLISHED_IMAGE_EXAMPLE = "tensorflow/serving:2.18.0"
IMAGE_PULL = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                        "RegistryUnavailable", "SignatureValidationFailed"})
CREATE_FAILED = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError"})
# Failed pods that ran and were then stopped: not admission rejections.
STOPPED = frozenset({"Evicted", "Terminated", "Shutdown", "NodeShutdown", "DeadlineExceeded", "Preempting"})
KEEP_REJECTED = 3  # the newest admission-rejected pods kept for `kubectl describe`; older ones are deleted
MAX_RECORDED_PODS = 50
_HINTS = {
    "SMTAlignmentError": "the node's static CPU manager (full-pcpus-only) hands out whole physical cores only: "
                         "the pod's CPUs are not a multiple of the node's threads per core",
    "TopologyAffinityError": "the node's topology manager could not place the pod's CPUs on one NUMA node "
                             "(fewer cores, or spec.placement.numa)",
    "OutOfcpu": "the node had no room for the pod's CPUs at admission (other pods, or CPUs the kubelet reserves)",
    "OutOfmemory": "the node had no room for the pod's memory at admission",
}

Pod = Mapping[str, Any]


def _name(pod: Pod) -> str:
    return str((pod.get("metadata") or {}).get("name") or "")


def _ready(pod: Pod) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _statuses(pod: Pod, *, init: bool = True) -> list[Mapping[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or [] if init else []), *(status.get("containerStatuses") or [])]


def _tail(text: str, limit: int = 300) -> str:
    """The last lines of a termination message (with FallbackToLogsOnError: the log's tail)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    out = ""
    for line in reversed(lines):
        joined = f"{line} | {out}" if out else line
        if len(joined) > limit:
            break
        out = joined
    return out or (lines[-1][-limit:] if lines else "")


def image_hint(image: str) -> str:
    """What to do when ``image`` cannot be pulled, if it is the unpublished default."""
    if image.removeprefix("docker.io/").removeprefix("index.docker.io/") != UNPUBLISHED_DEFAULT_IMAGE:
        return ""
    return (f"; {UNPUBLISHED_DEFAULT_IMAGE}, pinserve's default, is not published on Docker Hub: Intel's guides "
            "build it from TensorFlow Serving's tensorflow_serving/tools/docker/Dockerfile.mkl. Build it and push "
            "it to a registry your nodes reach, or choose another image: spec.server.image on this ModelServer, "
            "or the operator's default (chart value server.image, PINSERVE_SERVER_IMAGE), "
            f"e.g. the published {PUBLISHED_IMAGE_EXAMPLE}")


def _init_failure(pod: Pod) -> Condition | None:
    for cs in (pod.get("status") or {}).get("initContainerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
        if not term or term.get("exitCode", 0) == 0:
            continue
        message = (term.get("message") or term.get("reason") or "failed").strip()
        convert = f"{ModelConvertError.reason}: "
        if message.startswith(convert) or (
                cs.get("name") == "fetch-model" and term.get("exitCode") == ModelConvertError.exit_code):
            return Condition("Ready", "False", ModelConvertError.reason,
                             f"pod {_name(pod)}: init container {cs.get('name')} could not convert the model: "
                             f"{message.removeprefix(convert)}")
        if term.get("reason") == "OOMKilled":
            message = ("OOMKilled at its memory limit (the operator's PINSERVE_FETCH_MEMORY, or "
                       "PINSERVE_CONVERT_MEMORY for a conversion)")
        return Condition("Ready", "False", "ModelFetchFailed",
                         f"pod {_name(pod)}: init container {cs.get('name')} failed: {message}")
    return None


def _image_pull(pod: Pod) -> Condition | None:
    for cs in _statuses(pod):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in IMAGE_PULL:
            image = str(cs.get("image") or "")
            detail = str(waiting.get("message") or "").strip()
            return Condition("Ready", "False", "ImagePullFailed",
                             f"pod {_name(pod)}: container {cs.get('name')} cannot pull image {image} "
                             f"({waiting['reason']}{': ' + detail if detail else ''}){image_hint(image)}")
    return None


def _oom(pod: Pod, memory: str) -> Condition | None:
    for cs in _statuses(pod, init=False):
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
        if term.get("reason") == "OOMKilled":
            return Condition("Ready", "False", "OOMKilled",
                             f"pod {_name(pod)}: container {cs.get('name')} was killed at its memory limit "
                             f"({memory}, OOMKilled; restarted {cs.get('restartCount', 0)} times): "
                             "raise spec.resources.memory")
    return None


def _crash(pod: Pod) -> Condition | None:
    for cs in _statuses(pod, init=False):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") == "CrashLoopBackOff":
            last = (cs.get("lastState") or {}).get("terminated") or {}
            said = _tail(str(last.get("message") or "")) or str(last.get("reason") or "no termination message")
            return Condition("Ready", "False", "CrashLooping",
                             f"pod {_name(pod)}: container {cs.get('name')} keeps crashing (restarted "
                             f"{cs.get('restartCount', 0)} times, last exit code {last.get('exitCode', '?')}): {said}")
        if waiting.get("reason") in CREATE_FAILED:
            return Condition("Ready", "False", "ContainerCreateFailed",
                             f"pod {_name(pod)}: container {cs.get('name')} cannot start: {waiting['reason']}: "
                             f"{waiting.get('message') or ''}".rstrip(": "))
    return None


def _failed_reason(pod: Pod) -> str:
    status = pod.get("status") or {}
    return str(status.get("reason") or "Failed") if status.get("phase") == "Failed" else ""


def is_rejected(pod: Pod) -> bool:
    """Refused by the kubelet at admission: Failed with the admitting handler's reason, never run."""
    reason = _failed_reason(pod)
    return bool(reason) and reason not in STOPPED and reason != "Failed"


def _unschedulable(pod: Pod) -> Condition | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return Condition("Ready", "False", "Unschedulable",
                             f"pod {_name(pod)}: {cond.get('message') or cond.get('reason')}")
    return None


def _replica_failure(deployment: Mapping[str, Any] | None) -> Condition | None:
    for cond in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            name = (deployment or {}).get("metadata", {}).get("name", "")
            return Condition("Ready", "False", "ReplicaFailure",
                             f"Deployment {name} cannot create pods: {cond.get('reason') or 'ReplicaFailure'}: "
                             f"{cond.get('message') or ''}".rstrip(": "))
    return None


def rejected_message(record: Sequence[Mapping[str, Any]]) -> str:
    total = sum(int(r.get("count") or 0) for r in record)
    causes = ", ".join(f"{r['reason']} x{r.get('count', 0)}" + (f" on node {r['node']}" if r.get("node") else "")
                       for r in record)
    newest = record[0]
    pods = newest.get("pods") or [""]
    hint = _HINTS.get(str(newest["reason"]), "")
    return (f"the kubelet rejected {total} pod(s) at admission ({causes}); pod {pods[0]}: "
            f"{newest.get('message') or newest['reason']}{' (' + hint + ')' if hint else ''}; the ReplicaSet keeps "
            f"making more: pinserve keeps the newest {KEEP_REJECTED} rejected pods and deletes older ones")


def ready_problem(pods: Sequence[Pod], deployment: Mapping[str, Any] | None, memory: str,
                  rejected: Sequence[Mapping[str, Any]] = ()) -> Condition | None:
    """The first cause (in the module's order) of server pods not being ready, or None."""
    live = sorted((p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")), key=_name)
    not_ready = [p for p in live if not _ready(p)]
    checks = [(live, _init_failure), (live, _image_pull), (not_ready, lambda p: _oom(p, memory)),
              (not_ready, _crash)]
    for group, check in checks:
        for pod in group:
            found = check(pod)
            if found is not None:
                return found
    replica = _replica_failure(deployment)
    if replica is not None:
        return replica
    if rejected:
        return Condition("Ready", "False", "AdmissionRejected", rejected_message(rejected))
    for pod in live:
        found = _unschedulable(pod)
        if found is not None:
            return found
    for pod in live:
        reason = _failed_reason(pod)
        if reason and not is_rejected(pod):
            message = (pod.get("status") or {}).get("message") or ""
            return Condition("Ready", "False", "PodFailed",
                             f"pod {_name(pod)} failed: {reason}: {message}".rstrip(": "))
    return None


# -- admission rejections: the record in status, what to delete, which Events ---------------------------


def _created(pod: Pod) -> str:
    return str((pod.get("metadata") or {}).get("creationTimestamp") or "")


def rejected_record(pods: Sequence[Pod], previous: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """status.rejectedPods: per cause, the pods seen (count grows with each new one), newest cause first."""
    before = {str(r.get("reason")): r for r in previous or [] if isinstance(r, Mapping)}
    by_cause: dict[str, list[Pod]] = {}
    for pod in pods:
        if is_rejected(pod):
            by_cause.setdefault(_failed_reason(pod), []).append(pod)
    record = []
    for reason, group in by_cause.items():
        group.sort(key=lambda p: (_created(p), _name(p)), reverse=True)
        names = [_name(p) for p in group][:MAX_RECORDED_PODS]
        old = before.get(reason) or {}
        seen = set(old.get("pods") or [])
        count = int(old.get("count") or 0) + sum(1 for n in names if n not in seen) if old else len(names)
        newest = group[0]
        record.append({"reason": reason, "count": count, "pods": names,
                       "node": str((newest.get("spec") or {}).get("nodeName") or ""),
                       "message": redact_text(str((newest.get("status") or {}).get("message") or ""))[:500],
                       "_created": _created(newest)})
    record.sort(key=lambda r: (r.pop("_created"), r["reason"]), reverse=True)
    return record


def _owned_by_deployment(pod: Pod, deployment_name: str) -> bool:
    refs = (pod.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("kind") == "ReplicaSet" and r.get("controller") and
               str(r.get("name") or "").startswith(f"{deployment_name}-") for r in refs)


def rejected_to_delete(pods: Sequence[Pod], deployment_name: str, *, keep: int) -> list[tuple[str, str]]:
    """Admission-rejected pods of the Deployment's ReplicaSets beyond the newest ``keep``."""
    rejected = [p for p in pods if is_rejected(p) and _owned_by_deployment(p, deployment_name)
                and not (p.get("metadata") or {}).get("deletionTimestamp")]
    rejected.sort(key=lambda p: (_created(p), _name(p)), reverse=True)
    return [("Pod", _name(p)) for p in rejected[keep:]]


@dataclass(frozen=True)
class RejectionEvent:
    reason: str
    message: str


def new_causes(previous: Sequence[Mapping[str, Any]] | None,
               record: Sequence[Mapping[str, Any]]) -> list[RejectionEvent]:
    """One Warning per cause not in the previous record (not one per pod)."""
    known = {str(r.get("reason")) for r in previous or [] if isinstance(r, Mapping)}
    events = []
    for entry in record:
        if entry["reason"] in known:
            continue
        hint = _HINTS.get(str(entry["reason"]), "")
        pods = entry.get("pods") or [""]
        node = f" on node {entry['node']}" if entry.get("node") else ""
        events.append(RejectionEvent("AdmissionRejected",
                                     f"{entry['reason']}: the kubelet{node} rejected pod {pods[0]}: "
                                     f"{entry.get('message') or entry['reason']}{' (' + hint + ')' if hint else ''}"))
    return events
