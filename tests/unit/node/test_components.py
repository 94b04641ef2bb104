"""The local control plane's flags (tools/components.py): loopback only, each component its own port and dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import components

pytestmark = pytest.mark.unit

PKI = Path("/state/pki")


def every_component() -> dict[str, list[str]]:
    return {
        "etcd": components.etcd(Path("/state/etcd"), "http://127.0.0.1:2379", "http://127.0.0.1:2380"),
        "kube-apiserver": components.apiserver(PKI, etcd_url="http://127.0.0.1:2379", port=6443,
                                               token_file=PKI / "tokens.csv",
                                               kubelet_client_crt=PKI / "kc.crt", kubelet_client_key=PKI / "kc.key"),
        "kube-controller-manager": components.controller_manager(PKI, Path("/state/kcm.kubeconfig"), 10257),
        "kube-scheduler": components.scheduler(PKI, Path("/state/sched.kubeconfig"), 10259),
        "kwok": components.kwok(Path("/state/kwok.kubeconfig")),
    }


def flags(args: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for arg in args:
        assert arg.startswith("--") and "=" in arg, arg
        name, value = arg[2:].split("=", 1)
        found.setdefault(name, []).append(value)
    return found


@pytest.mark.parametrize("name", list(every_component()))
def test_servers_listen_on_loopback_only(name: str) -> None:
    args = flags(every_component()[name])
    for flag in ("bind-address", "advertise-address"):
        assert args.get(flag, ["127.0.0.1"]) == ["127.0.0.1"], (name, flag)
    for flag in ("listen-client-urls", "listen-peer-urls", "etcd-servers"):
        for url in args.get(flag, []):
            assert url.startswith("http://127.0.0.1:"), (name, flag, url)


@pytest.mark.parametrize("name", [n for n in every_component() if n not in ("kwok", "etcd")])
def test_each_kubernetes_component_has_its_port_and_no_flag_twice(name: str) -> None:
    args = flags(every_component()[name])
    assert len(args["secure-port"]) == 1
    assert all(len(v) == 1 for v in args.values())  # kwok alone repeats --config
    assert args["profiling"] == ["false"]


def test_the_controller_manager_runs_what_pinserve_needs() -> None:
    controllers = flags(every_component()["kube-controller-manager"])["controllers"][0].split(",")
    assert controllers == list(components.CONTROLLERS)
    for needed in ("deployment-controller", "replicaset-controller", "job-controller", "garbage-collector-controller"):
        assert needed in controllers


def test_the_token_file_names_every_user_once_and_the_node_as_a_node() -> None:
    tokens = {user: f"t-{user}" for user in components.TOKEN_USERS}
    lines = components.token_file(tokens).splitlines()
    assert [line.split(",", 1)[0] for line in lines] == [f"t-{user}" for user in components.TOKEN_USERS]
    node = lines[components.TOKEN_USERS.index("node")]
    assert node == (f't-node,system:node:{components.REAL_NODE_NAME},system:node:{components.REAL_NODE_NAME},'
                    '"system:nodes"')
