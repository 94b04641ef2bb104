"""The local real node's pure parts: configuration renderers, the iptables undo, image hashing."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import yaml

from tools.node import config
from tools.node.host import iptables_undo
from tools.node.images import content_hash

pytestmark = pytest.mark.unit

LAYOUT = config.NodeLayout(Path("/state/node"))


def test_containerd_keeps_everything_under_the_state_dir_and_refuses_negative_oom_scores() -> None:
    text = config.containerd_toml(LAYOUT, sandbox_image="localhost/pinserve/pause:abc", cni_bin="/usr/lib/cni")
    data = tomllib.loads(text)
    assert data["root"].startswith("/state/node/") and data["state"].startswith("/state/node/")
    assert data["grpc"]["address"] == "/state/node/containerd/containerd.sock"
    cri = data["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "localhost/pinserve/pause:abc"
    assert cri["restrict_oom_score_adj"] is True
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert cri["cni"] == {"bin_dir": "/usr/lib/cni", "conf_dir": "/state/node/cni/net.d", "max_conf_num": 1}


def test_the_host_routes_to_the_pods_but_pod_traffic_never_leaves_the_machine() -> None:
    net = json.loads(config.cni_conflist(LAYOUT))
    bridge = net["plugins"][0]
    # The bridge holds the gateway address: the host's route to the pod subnet (probes go over it).
    assert (bridge["type"], bridge["isGateway"]) == ("bridge", True)
    # No default route in the pods and no NAT: nothing a pod sends can leave the host.
    assert (bridge["isDefaultGateway"], bridge["ipMasq"]) == (False, False)
    assert "routes" not in bridge["ipam"]
    assert bridge["ipam"]["dataDir"] == "/state/node/cni/ipam"


def test_the_kubelet_pins_whole_cores_and_serves_on_loopback_only() -> None:
    settings = config.kubelet_config(LAYOUT, port=10250, healthz_port=10248, client_ca=Path("/pki/ca.crt"))
    assert settings["cpuManagerPolicy"] == "static"
    assert settings["cpuManagerPolicyOptions"] == {"full-pcpus-only": "true"}
    assert settings["kubeReserved"] == {"cpu": "100m"}
    assert (settings["address"], settings["healthzBindAddress"], settings["readOnlyPort"]) == ("127.0.0.1",) * 2 + (0,)
    assert settings["authentication"]["anonymous"] == {"enabled": False}
    assert settings["authentication"]["x509"] == {"clientCAFile": "/pki/ca.crt"}
    assert (settings["oomScoreAdj"], settings["failCgroupV1"], settings["makeIPTablesUtilChains"]) == (0, False, False)
    assert yaml.safe_load(config.kubelet_config_yaml(settings)) == settings
    args = config.kubelet_args(LAYOUT, kubeconfig=Path("/k"), bin_dir=Path("/bin"))
    assert f"--hostname-override={config.NODE_NAME}" in args
    assert "--root-dir=/state/node/kubelet" in args


BEFORE = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
COMMIT
"""
AFTER = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL -m mark --mark 0x8000 -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
COMMIT
*mangle
:KUBE-IPTABLES-HINT - [0:0]
COMMIT
"""


def test_iptables_undo_removes_new_rules_then_new_chains_and_keeps_the_old() -> None:
    assert iptables_undo(BEFORE, AFTER) == [
        ["-t", "filter", "-D", "KUBE-FIREWALL", "-m", "mark", "--mark", "0x8000", "-j", "DROP"],
        ["-t", "filter", "-D", "INPUT", "-j", "KUBE-FIREWALL"],
        ["-t", "filter", "-F", "KUBE-FIREWALL"],
        ["-t", "filter", "-X", "KUBE-FIREWALL"],
        ["-t", "mangle", "-F", "KUBE-IPTABLES-HINT"],
        ["-t", "mangle", "-X", "KUBE-IPTABLES-HINT"],
    ]
    assert iptables_undo(BEFORE, BEFORE) == []


def test_an_image_tag_follows_its_content(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("one")
    first = content_hash([tmp_path], "x", root=tmp_path)
    assert content_hash([tmp_path], "x", root=tmp_path) == first
    (tmp_path / "a").write_text("two")
    assert content_hash([tmp_path], "x", root=tmp_path) != first
    assert content_hash([tmp_path], "y", root=tmp_path) != content_hash([tmp_path], "x", root=tmp_path)
