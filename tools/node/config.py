"""Pure renderers for the local real node: containerd, CNI and kubelet configuration.

Everything the node writes lives under its state directory; what cannot (paths the kubelet or the CNI
plugins hard-code) is recorded and undone by tools/node/host.py. Settings measured to work on these
machines (cgroup v1 controllers, negative OOM scores refused, 2 CPUs):

- ``cpuManagerPolicy: static`` with ``full-pcpus-only``; ``kubeReserved: {cpu: 100m}`` keeps 1.9 CPUs
  allocatable while the static policy still holds CPU 0 back for the shared pool (it reserves
  ceil(reserved) whole CPUs), so one pod can own CPU 1 and the operator, the agent and the benchmark
  client share CPU 0;
- ``failCgroupV1: false`` and ``cgroupDriver: cgroupfs`` (the kernel mounts cgroup v1 controllers);
- ``oomScoreAdj: 0`` here and ``restrict_oom_score_adj`` in containerd (negative scores are refused);
- the kubelet serves on 127.0.0.1 only and accepts only client certificates of the cluster's kubelet CA.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

NODE_NAME = "127.0.0.1"  # as hack/local-up-cluster.sh: a loopback node IP is otherwise refused
BRIDGE = "pinserve0"
CNI_NETWORK = "pinserve"
POD_SUBNET = "10.244.77.0/24"  # pods reach each other and the host (probes), nothing beyond
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")


@dataclass(frozen=True)
class NodeLayout:
    """Where the node keeps its files (all under ``state_dir``)."""

    state_dir: Path

    @property
    def containerd_dir(self) -> Path:
        return self.state_dir / "containerd"

    @property
    def containerd_config(self) -> Path:
        return self.containerd_dir / "config.toml"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_dir / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.state_dir / "cni" / "net.d"

    @property
    def cni_data_dir(self) -> Path:
        return self.state_dir / "cni" / "ipam"

    @property
    def kubelet_dir(self) -> Path:
        return self.state_dir / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.state_dir / "kubelet-config.yaml"

    @property
    def kubelet_kubeconfig(self) -> Path:
        return self.state_dir / "kubelet.kubeconfig"

    @property
    def cpu_manager_state(self) -> Path:
        return self.kubelet_dir / "cpu_manager_state"

    @property
    def pod_resources_dir(self) -> Path:
        return self.kubelet_dir / "pod-resources"

    @property
    def pod_logs_dir(self) -> Path:
        return self.state_dir / "pod-logs"

    @property
    def resolv_conf(self) -> Path:
        return self.state_dir / "resolv.conf"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"


def cni_bin_dir() -> str:
    for candidate in CNI_BIN_DIRS:
        if (Path(candidate) / "bridge").exists():
            return candidate
    return CNI_BIN_DIRS[0]


def containerd_toml(layout: NodeLayout, *, sandbox_image: str, cni_bin: str) -> str:
    """containerd 1.6 (config version 2): its own root, state and socket; CRI with runc on cgroupfs."""
    d = layout.containerd_dir
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return "\n".join([
        "version = 2",
        f'root = "{d / "root"}"',
        f'state = "{d / "state"}"',
        "oom_score = 0",
        'disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",',
        '  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",',
        '  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]',
        "[grpc]",
        f'  address = "{layout.containerd_socket}"',
        "[ttrpc]",
        f'  address = "{d / "containerd.ttrpc.sock"}"',
        "[debug]",
        '  address = ""',
        "[metrics]",
        '  address = ""',
        '[plugins."io.containerd.internal.v1.opt"]',
        f'  path = "{d / "opt"}"',
        f"[{cri}]",
        f'  sandbox_image = "{sandbox_image}"',
        "  restrict_oom_score_adj = true",
        "  enable_selinux = false",
        "  max_container_log_line_size = 16384",
        f"[{cri}.containerd]",
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
        f"[{cri}.containerd.runtimes.runc]",
        '  runtime_type = "io.containerd.runc.v2"',
        f"[{cri}.containerd.runtimes.runc.options]",
        "  SystemdCgroup = false",
        f"[{cri}.cni]",
        f'  bin_dir = "{cni_bin}"',
        f'  conf_dir = "{layout.cni_conf_dir}"',
        "  max_conf_num = 1",
        "",
    ])


def cni_conflist(layout: NodeLayout) -> str:
    """One bridge holding the subnet's gateway address, so the host (the kubelet's probes) routes to the
    pods over it instead of its default route; but no default route in the pods and no masquerading, so
    pod traffic never leaves the machine. (The plugin turns on ip_forward for a gateway bridge; the host
    ledger puts it back.)"""
    return json.dumps({
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": True,
            "isDefaultGateway": False,
            "ipMasq": False,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": POD_SUBNET}]],
                "dataDir": str(layout.cni_data_dir),
            },
        }],
    }, indent=2) + "\n"


def kubelet_config(layout: NodeLayout, *, port: int, healthz_port: int, client_ca: Path,
                   reserved_cpu: str = "100m") -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "AlwaysAllow"},  # only the apiserver holds a client certificate
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "cpuManagerPolicy": "static",
        "cpuManagerPolicyOptions": {"full-pcpus-only": "true"},
        "cpuManagerReconcilePeriod": "5s",
        "kubeReserved": {"cpu": reserved_cpu},
        "oomScoreAdj": 0,
        "maxOpenFiles": 20000,
        "makeIPTablesUtilChains": False,
        "failSwapOn": False,
        "protectKernelDefaults": False,
        "podLogsDir": str(layout.pod_logs_dir),
        "resolvConf": str(layout.resolv_conf),
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "containerLogMaxSize": "10Mi",
        "registerNode": True,
        "maxPods": 30,
    }


def kubelet_config_yaml(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False)


def kubelet_args(layout: NodeLayout, *, kubeconfig: Path, bin_dir: Path) -> list[str]:
    return [
        str(bin_dir / "kubelet"),
        f"--config={layout.kubelet_config}",
        f"--kubeconfig={kubeconfig}",
        f"--root-dir={layout.kubelet_dir}",
        f"--cert-dir={layout.kubelet_dir / 'pki'}",
        f"--hostname-override={NODE_NAME}",
        "--node-labels=pinserve.io/real-node=true",
        "--v=1",
    ]
