"""The node agent (``pinserve agent``): publishes its node's CPU topology and the cpusets of pinserve pods.

``podresources`` reads each container's CPUs from the kubelet's pod-resources API (messages in
``podresources_pb``) and merges them with the policy ``cpumanager`` reads from the kubelet's checkpoint,
``publisher`` computes patches (pure), ``loop`` runs the watch/poll loop against the API, ``cli`` is the
command line. The agent needs these rights and no more: core ``pods`` get/list/watch/patch and core
``nodes`` get/patch (no ``nodes/proxy``); the chart's ValidatingAdmissionPolicy narrows them to its own
node, the pods bound to it and ``pinserve.io/`` labels and annotations.
"""

from pinserve.agent.cpumanager import CpuManagerState, parse_state, read_state
from pinserve.agent.publisher import ANNOTATION_CPU_MANAGER, node_patch, pod_patch

__all__ = ["ANNOTATION_CPU_MANAGER", "CpuManagerState", "node_patch", "parse_state", "pod_patch", "read_state"]
