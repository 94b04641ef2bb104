"""Installing pinserve for real: the Helm chart and manifests/install.yaml into the control plane."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from operator_harness import REPO, eventually, install_crd

pytestmark = pytest.mark.integration

RELEASE = "it-release"  # not "pinserve": other tests apply the chart's RBAC under that name
NAMESPACE = "pinserve-install"
INSTANCE = f"app.kubernetes.io/instance={RELEASE}"


def helm(cluster: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(cluster.bin_dir / "helm"), "--kubeconfig", str(cluster.kubeconfig), *args],
                          capture_output=True, text=True, check=False, timeout=300)


def leftovers(cluster: Any) -> list[str]:
    found = []
    for kind in ("clusterroles", "clusterrolebindings"):
        found += cluster.kubectl("get", kind, "-l", INSTANCE, "-o", "name").stdout.split()
    for kind in ("deployments", "daemonsets", "serviceaccounts", "configmaps", "services"):
        names = cluster.kubectl("get", kind, "-n", NAMESPACE, "-l", INSTANCE, "-o", "name",
                                check=False).stdout.split()
        found += names
    return found


def test_helm_install_runs_the_operator_and_uninstall_leaves_nothing(cluster: Any) -> None:
    proc = helm(cluster, "install", RELEASE, str(REPO / "charts/pinserve"), "--namespace", NAMESPACE,
                "--create-namespace", "--wait", "--timeout", "180s")
    assert proc.returncode == 0, proc.stderr
    try:
        assert cluster.exists("crd", "modelservers.pinserve.io")
        deployments = cluster.get_json("-n", NAMESPACE, "deployments", "-l", INSTANCE)["items"]
        assert deployments, "the chart installed no operator Deployment"
        operator = deployments[0]
        assert operator["status"].get("readyReplicas") == 1
        pod_spec = operator["spec"]["template"]["spec"]
        account = pod_spec["serviceAccountName"]
        # The operator's ServiceAccount may do what the operator needs, and no more.
        can = {
            ("patch", "modelservers.pinserve.io", "status"): "yes",
            ("create", "deployments.apps", ""): "yes",
            ("delete", "jobs.batch", ""): "yes",
            ("get", "secrets", ""): "no",
            ("delete", "deployments.apps", ""): "no",
            ("get", "nodes", "proxy"): "no",
            ("create", "pods", "exec"): "no",
        }
        for (verb, resource, sub), expected in can.items():
            extra = [f"--subresource={sub}"] if sub else []
            answer = cluster.kubectl("auth", "can-i", verb, resource, *extra, "-A",
                                     f"--as=system:serviceaccount:{NAMESPACE}:{account}", check=False).stdout.strip()
            assert answer == expected, f"{account} can-i {verb} {resource} {sub}: {answer}"
        daemonsets = cluster.get_json("-n", NAMESPACE, "daemonsets", "-l", INSTANCE)["items"]
        assert daemonsets, "the chart installed no agent DaemonSet"
        # Every example is accepted by the real API server (schema, defaults and CEL rules).
        cluster.kubectl("create", "namespace", "examples", check=False)
        dry = cluster.kubectl("apply", "-n", "examples", "--dry-run=server", "-f",
                              str(REPO / "manifests/examples"), check=False)
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.count("modelserver.pinserve.io") == len(list((REPO / "manifests/examples").glob("*.yaml")))
    finally:
        proc = helm(cluster, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "120s")
    assert proc.returncode == 0, proc.stderr
    eventually("no operator objects left behind", lambda: not leftovers(cluster), timeout=60)
    assert cluster.exists("crd", "modelservers.pinserve.io"), "Helm keeps CRDs on uninstall"


def test_plain_manifests_install_and_remove(cluster: Any) -> None:
    install_crd(cluster)
    manifest = Path(REPO / "manifests/install.yaml")
    applied = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(manifest), check=False)
    assert applied.returncode == 0, applied.stderr
    try:
        namespaces = {line.split("/")[0] for line in applied.stdout.split() if "/" in line}
        assert any(kind.startswith("deployment") for kind in namespaces)
        docs = cluster.kubectl("get", "-f", str(manifest), "-o", "name").stdout.split()
        assert any(d.startswith("daemonset") for d in docs)
        assert any(d.startswith("clusterrole") for d in docs)
    finally:
        # Everything but the CRD: deleting it would delete every ModelServer of the other tests.
        names = [n for n in cluster.kubectl("get", "-f", str(manifest), "-o", "name", check=False).stdout.split()
                 if not n.startswith("customresourcedefinition")]
        removed = cluster.kubectl("delete", "--ignore-not-found", "--wait=true", *names, check=False, timeout=180)
    assert removed.returncode == 0, removed.stderr
