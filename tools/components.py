"""What each control-plane component of the local cluster is started with: pure argument lists.

tools/cluster.py starts them (and waits for each); keeping the flags here keeps that module about starting
and waiting, and lets the flags be read, and tested, on their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tools.binaries import TOOLS_DIR

KWOK_CONFIG_DIR = TOOLS_DIR / "kwok"
#: The real node registers under this name (tools/node/config.py): a loopback node IP is refused otherwise.
REAL_NODE_NAME = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
#: What the controller manager runs: enough for Deployments, Jobs, DaemonSets, StatefulSets, Services,
#: garbage collection, namespaces, service accounts and node health.
CONTROLLERS: tuple[str, ...] = (
    "serviceaccount-token-controller",
    "serviceaccount-controller",
    "namespace-controller",
    "garbage-collector-controller",
    "deployment-controller",
    "replicaset-controller",
    "job-controller",
    "cronjob-controller",
    "ttl-after-finished-controller",
    "daemonset-controller",
    "statefulset-controller",
    "disruption-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "node-lifecycle-controller",
    "pod-garbage-collector-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "service-cidr-controller",
)
#: The users of the static token file (kube-apiserver --token-auth-file).
TOKEN_USERS = ("admin", "kcm", "scheduler", "kwok", "node")


def token_file(tokens: Mapping[str, str]) -> str:
    """kube-apiserver's static tokens: one per component, the real node's kubelet as a node identity."""
    return (
        f'{tokens["admin"]},pinserve-admin,pinserve-admin,"system:masters"\n'
        f"{tokens['kcm']},system:kube-controller-manager,system:kube-controller-manager\n"
        f"{tokens['scheduler']},system:kube-scheduler,system:kube-scheduler\n"
        f'{tokens["kwok"]},kwok-controller,kwok-controller,"system:masters"\n'
        # The real node's kubelet (tools/node): a node identity, so the Node authorizer applies.
        f'{tokens["node"]},system:node:{REAL_NODE_NAME},system:node:{REAL_NODE_NAME},"system:nodes"\n'
    )


def etcd(data_dir: Path, client_url: str, peer_url: str) -> list[str]:
    return [
        "--name=pinserve",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=pinserve={peer_url}",
        "--initial-cluster-state=new",
        "--unsafe-no-fsync=true",  # a throw-away test store: speed over durability
        "--quota-backend-bytes=2147483648",
        "--log-level=warn",
    ]


def apiserver(pki: Path, *, etcd_url: str, port: int, token_file: Path, kubelet_client_crt: Path,
              kubelet_client_key: Path) -> list[str]:
    return [
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={pki / 'apiserver'}",
        f"--token-auth-file={token_file}",
        "--authorization-mode=Node,RBAC",
        f"--service-account-issuer={SA_ISSUER}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # The advertise address is loopback, which an Endpoints object may not hold.
        "--endpoint-reconciler-type=none",
        "--allow-privileged=true",
        # logs/exec through the real node's kubelet (tools/node), which listens on 127.0.0.1.
        f"--kubelet-client-certificate={kubelet_client_crt}",
        f"--kubelet-client-key={kubelet_client_key}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        "--profiling=false",
        "--v=1",
    ]


def controller_manager(pki: Path, kubeconfig: Path, port: int) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={pki / 'kube-controller-manager'}",
        "--leader-elect=false",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--cluster-name=pinserve",
        f"--controllers={','.join(CONTROLLERS)}",
        "--concurrent-gc-syncs=5",
        "--profiling=false",
        "--v=1",
    ]


def scheduler(pki: Path, kubeconfig: Path, port: int) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={pki / 'kube-scheduler'}",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]


def kwok(kubeconfig: Path) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        f"--config={KWOK_CONFIG_DIR / 'kwok.yaml'}",
        f"--config={KWOK_CONFIG_DIR / 'node-stages.yaml'}",
        f"--config={KWOK_CONFIG_DIR / 'pod-stages.yaml'}",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        "--node-lease-duration-seconds=40",
    ]
