"""Runs the real operator in-process (kopf's KopfRunner) under its chart's RBAC.

The CRD is applied from crds/, the operator's ServiceAccount, ClusterRole and binding are
rendered from charts/pinserve with real helm, and the operator talks to the API server
with a token of that ServiceAccount — so a verb missing from the chart fails a test.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kopf.testing import KopfRunner

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "modelservers.pinserve.io.yaml"
CHART = REPO / "charts" / "pinserve"
OPERATOR_NAMESPACE = "pinserve-it"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}

T = TypeVar("T")


def install_crd(cluster: Any) -> None:
    cluster.install_crd(CRD, "modelservers.pinserve.io")


def chart_documents(cluster: Any, *values: str) -> list[dict[str, Any]]:
    args = [str(cluster.bin_dir / "helm"), "template", "pinserve", str(CHART), "--namespace", OPERATOR_NAMESPACE]
    for value in values:
        args += ["--set", value]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def operator_service_account(docs: list[dict[str, Any]]) -> str:
    for doc in docs:
        if doc["kind"] == "Deployment":
            containers = doc["spec"]["template"]["spec"]["containers"]
            if any("run" in (c.get("args") or []) + (c.get("command") or []) for c in containers):
                return str(doc["spec"]["template"]["spec"]["serviceAccountName"])
    raise AssertionError("the chart renders no operator Deployment running `pinserve run`")


def install_operator_rbac(cluster: Any, kubeconfig_out: Path) -> str:
    """Apply the chart's RBAC and write a kubeconfig holding a token of the operator's ServiceAccount."""
    docs = chart_documents(cluster)
    account = operator_service_account(docs)
    cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    cluster.apply_objects([d for d in docs if d["kind"] in RBAC_KINDS])
    token = cluster.kubectl("create", "token", account, "-n", OPERATOR_NAMESPACE, "--duration=3h").stdout.strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    admin["users"] = [{"name": "operator", "user": {"token": token}}]
    for ctx in admin["contexts"]:
        ctx["context"]["user"] = "operator"
    kubeconfig_out.write_text(yaml.safe_dump(admin))
    return account


@contextmanager
def running_operator(kubeconfig: Path, namespace: str | None = None, **env: str) -> Iterator[KopfRunner]:
    """The operator, in this process, as its ServiceAccount; stopped on exit.

    With ``namespace`` it watches only that namespace (kopf --namespace), as PINSERVE_NAMESPACES does.
    """
    saved = {k: os.environ.get(k) for k in ("KUBECONFIG", *env)}
    os.environ["KUBECONFIG"] = str(kubeconfig)
    os.environ.update(env)
    try:
        scope = ["--namespace", namespace] if namespace else ["--all-namespaces"]
        with KopfRunner(["run", "--standalone", *scope, "-m", "pinserve.handlers"], timeout=60) as runner:
            yield runner
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def operator_fixture(**env: str) -> Any:
    """A module-scoped ``operator`` fixture: the CRD, the chart's RBAC, and the operator running under it
    with ``env`` for the module; it must not have died of an exception by the module's end."""

    @pytest.fixture(scope="module")
    def operator(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KopfRunner]:
        install_crd(cluster)
        kubeconfig = tmp_path_factory.mktemp("operator") / "kubeconfig"
        install_operator_rbac(cluster, kubeconfig)
        with running_operator(kubeconfig, **env) as runner:
            yield runner
        assert runner.exception is None, runner.exception

    return operator


def eventually(what: str, probe: Callable[[], T | None], timeout: float = 60, interval: float = 0.25) -> T:
    """Poll until probe returns something truthy; fail naming what was awaited and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (AssertionError, KeyError, IndexError, TypeError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return {}


def modelserver(name: str, *, cores: int = 2, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "pinserve.io/v1alpha1",
        "kind": "ModelServer",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "https://models.example.com/half_plus_two.tar.gz", "path": "half_plus_two/saved_model"},
            "resources": {"physicalCores": cores, "memory": "2Gi"},
            "benchmark": {"enabled": False},
        },
    }
    body["spec"].update(spec)
    return body
