"""The Helm chart lints and renders with the real helm, and what it renders keeps the promises:
Guaranteed QoS everywhere, least-privilege RBAC, a read-only view of the host for the agent,
and manifests/install.yaml generated from the current chart.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pinserve import api

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "pinserve"
CRD_PATH = ROOT / "crds" / "modelservers.pinserve.io.yaml"
INSTALL = ROOT / "manifests" / "install.yaml"
GEN = ROOT / "tools" / "gen_manifests.sh"
NAMESPACE = "pinserve-system"

Doc = dict[str, Any]


@functools.cache
def helm() -> str:
    """helm from PINSERVE_BIN_DIR, else the newest tools/testbin.sh build, else PATH."""
    bin_dir = os.environ.get("PINSERVE_BIN_DIR")
    if bin_dir and (Path(bin_dir) / "helm").is_file():
        return str(Path(bin_dir) / "helm")
    cache = Path(os.environ.get("PINSERVE_CACHE", Path.home() / ".cache" / "pinserve"))
    builds = [p for p in (cache / "bin").glob("current-*/helm") if p.is_file()]
    if builds:
        return str(max(builds, key=lambda p: p.stat().st_mtime))
    found = shutil.which("helm")
    if found:
        return found
    pytest.fail("helm not found: run tools/testbin.sh (it builds helm) or set PINSERVE_BIN_DIR")


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def render(*set_args: str, include_crds: bool = False) -> list[Doc]:
    args = ["template", "pinserve", str(CHART), "--namespace", NAMESPACE]
    if include_crds:
        args.append("--include-crds")
    for value in set_args:
        args += ["--set", value]
    docs = [d for d in yaml.safe_load_all(run_helm(*args).stdout) if d]
    assert all(isinstance(d, dict) for d in docs)
    return docs


@pytest.fixture(scope="module")
def rendered() -> list[Doc]:
    return render()


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str, component: str) -> Doc:
    (doc,) = [
        d for d in by_kind(docs, kind)
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]  # fmt: skip
    return doc


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for doc in docs:
        if doc["kind"] in {"Deployment", "DaemonSet", "StatefulSet", "Job"}:
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            yield f"Pod/{doc['metadata']['name']}", doc["spec"]


def env_of(container: Doc) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# ---------------------------------------------------------------- helm itself


def test_helm_lint() -> None:
    proc = run_helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in proc.stdout


def test_renders_expected_objects(rendered: list[Doc]) -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in rendered)
    assert kinds == [
        ("ClusterRole", "pinserve-agent"),
        ("ClusterRole", "pinserve-operator"),
        ("ClusterRoleBinding", "pinserve-agent"),
        ("ClusterRoleBinding", "pinserve-operator"),
        ("DaemonSet", "pinserve-agent"),
        ("Deployment", "pinserve-operator"),
        ("Service", "pinserve-operator-metrics"),
        ("ServiceAccount", "pinserve-agent"),
        ("ServiceAccount", "pinserve-operator"),
        ("ValidatingAdmissionPolicy", "pinserve-agent-own-node"),
        ("ValidatingAdmissionPolicyBinding", "pinserve-agent-own-node"),
    ]
    for doc in rendered:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"]["namespace"] == NAMESPACE


CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


def test_agent_can_be_disabled() -> None:
    docs = render("agent.enabled=false")
    assert not by_kind(docs, "DaemonSet")
    assert not by_kind(docs, "ValidatingAdmissionPolicy") and not by_kind(docs, "ValidatingAdmissionPolicyBinding")
    assert [d["metadata"]["name"] for d in by_kind(docs, "ClusterRole")] == ["pinserve-operator"]
    assert [d["metadata"]["name"] for d in by_kind(docs, "ServiceAccount")] == ["pinserve-operator"]


def test_include_crds_renders_the_crds() -> None:
    crds = by_kind(render(include_crds=True), "CustomResourceDefinition")
    top_level = [d for p in sorted((ROOT / "crds").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    key = lambda d: d["metadata"]["name"]  # noqa: E731
    assert sorted(crds, key=key) == sorted(top_level, key=key)
    assert {key(d) for d in crds} == {"modelservers.pinserve.io", "clusterkopfpeerings.kopf.dev",
                                      "kopfpeerings.kopf.dev"}


# ---------------------------------------------------------------- Guaranteed QoS


@pytest.mark.parametrize("set_args", [(), ("agent.enabled=false",)])
def test_every_container_has_requests_equal_limits(set_args: tuple[str, ...]) -> None:
    specs = list(pod_specs(render(*set_args)))
    assert specs
    for owner, spec in specs:
        for container in spec.get("initContainers", []) + spec["containers"]:
            res = container.get("resources", {})
            where = f"{owner} container {container['name']}"
            assert res.get("requests"), f"{where}: no requests"
            assert set(res["requests"]) >= {"cpu", "memory"}, where
            assert res["requests"] == res.get("limits"), f"{where}: requests != limits"


def test_unequal_resources_are_refused() -> None:
    proc = run_helm("template", "pinserve", str(CHART), "--set", "operator.resources.limits.cpu=500m", check=False)
    assert proc.returncode != 0
    assert "requests must equal limits" in proc.stderr


def test_values_schema_rejects_unknown_values() -> None:
    proc = run_helm("template", "pinserve", str(CHART), "--set", "operator.bogus=1", check=False)
    assert proc.returncode != 0
    assert "bogus" in proc.stderr


# ---------------------------------------------------------------- RBAC


OPERATOR_RULES = {
    ("pinserve.io", "modelservers"): {"get", "list", "watch", "patch"},
    ("pinserve.io", "modelservers/status"): {"get", "patch", "update"},
    ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "create", "patch"},
    ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "create", "patch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "update"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "update"},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch", "update", "delete"},  # the trials' ConfigMap
    ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},
    # Tuning trial pods; deletes also of admission-rejected server pods beyond the newest few.
    ("", "pods"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "nodes"): {"get", "list", "watch"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"get", "list", "watch"},
}
AGENT_RULES = {
    ("", "nodes"): {"get", "list", "watch", "patch"},
    ("", "pods"): {"get", "list", "watch", "patch"},
}


def grants(role: Doc) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_rbac_is_least_privilege(rendered: list[Doc]) -> None:
    roles = by_kind(rendered, "ClusterRole") + by_kind(rendered, "Role")
    for role in roles:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), f"{role['metadata']['name']}: wildcard {key}"
            assert not {"nodes/proxy", "secrets", "pods/exec", "pods/attach"} & set(rule["resources"])
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
    assert grants(one(rendered, "ClusterRole", "operator")) == OPERATOR_RULES
    assert grants(one(rendered, "ClusterRole", "agent")) == AGENT_RULES


def test_bindings_point_at_the_service_accounts(rendered: list[Doc]) -> None:
    for component in ("operator", "agent"):
        binding = one(rendered, "ClusterRoleBinding", component)
        role = one(rendered, "ClusterRole", component)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]
        }  # fmt: skip
        workload = one(rendered, "Deployment" if component == "operator" else "DaemonSet", component)
        account = workload["spec"]["template"]["spec"]["serviceAccountName"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]


# ---------------------------------------------------------------- workloads


def test_operator_deployment(rendered: list[Doc]) -> None:
    deploy = one(rendered, "Deployment", "operator")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "RollingUpdate",
                                          "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["pinserve", "run"]
    assert container["image"] == "pinserve/operator:0.1.0"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {"name": "healthz", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    env = env_of(container)
    assert env["PINSERVE_SERVER_IMAGE"] == "tensorflow/serving:mkl"
    assert env["PINSERVE_OPERATOR_IMAGE"] == container["image"]
    assert env["PINSERVE_BENCH_IMAGE"] == "pinserve/bench:0.1.0"
    assert env["PINSERVE_NAMESPACES"] == ""
    assert env["PINSERVE_RESYNC_SECONDS"] == "600"
    assert env["PINSERVE_KEEP_BENCH_JOBS"] == "3"
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_operator_values_reach_the_environment() -> None:
    docs = render(
        "operator.namespaces={team-a,team-b}",
        "operator.image.tag=1.2.3",
        "bench.image.tag=1.2.3",
        "server.image=example.org/serving:2.15",
        "imagePullSecrets[0].name=regcred",
    )
    deploy = one(docs, "Deployment", "operator")
    pod = deploy["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert env["PINSERVE_NAMESPACES"] == "team-a,team-b"
    assert env["PINSERVE_OPERATOR_IMAGE"] == "pinserve/operator:1.2.3"
    assert env["PINSERVE_BENCH_IMAGE"] == "pinserve/bench:1.2.3"
    assert env["PINSERVE_SERVER_IMAGE"] == "example.org/serving:2.15"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    agent = one(docs, "DaemonSet", "agent")["spec"]["template"]["spec"]
    assert agent["containers"][0]["image"] == "pinserve/operator:1.2.3"
    assert agent["imagePullSecrets"] == [{"name": "regcred"}]


def test_agent_daemonset(rendered: list[Doc]) -> None:
    ds = one(rendered, "DaemonSet", "agent")
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["pinserve", "agent"]
    env = env_of(container)
    assert env["PINSERVE_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["PINSERVE_SYSFS_ROOT"] == "/host/sys"
    assert env["PINSERVE_CPU_MANAGER_STATE"] == "/host/var/lib/kubelet/cpu_manager_state"
    assert env["PINSERVE_POD_RESOURCES_SOCKET"] == "/host/var/lib/kubelet/pod-resources/kubelet.sock"
    assert env["PINSERVE_AGENT_INTERVAL_SECONDS"] == "300"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert "priorityClassName" not in pod
    critical = one(render("agent.priorityClassName=system-node-critical"), "DaemonSet", "agent")
    assert critical["spec"]["template"]["spec"]["priorityClassName"] == "system-node-critical"
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    sc = container["securityContext"]
    assert not sc.get("privileged")
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # uid 0 only because the kubelet's pod-resources socket admits no other uid (values.yaml says why).
    assert pod["securityContext"]["runAsUser"] == 0


@pytest.mark.parametrize("set_args", [(), ("agent.kubeletDir=/var/snap/microk8s/common/var/lib/kubelet/",)])
def test_agent_host_mounts_are_read_only_and_never_the_kubelet_directory(set_args: tuple[str, ...]) -> None:
    pod = one(render(*set_args), "DaemonSet", "agent")["spec"]["template"]["spec"]
    host_volumes = {v["name"]: v["hostPath"] for v in pod["volumes"] if "hostPath" in v}
    kubelet_dir = set_args[0].split("=", 1)[1].rstrip("/") if set_args else "/var/lib/kubelet"
    assert sorted((h["path"], h["type"]) for h in host_volumes.values()) == sorted([
        ("/sys", "Directory"),
        (f"{kubelet_dir}/pod-resources", "Directory"),  # the socket's directory, nothing else of the kubelet's
        (f"{kubelet_dir}/cpu_manager_state", "File"),  # alone; never created by the runtime
    ])  # fmt: skip
    mounts = {m["name"]: m for c in pod["containers"] for m in c.get("volumeMounts", [])}
    for name in host_volumes:
        assert mounts[name].get("readOnly") is True, f"hostPath volume {name} is mounted writable"
    assert {mounts[n]["mountPath"] for n in host_volumes} == {
        "/host/sys", "/host/var/lib/kubelet/pod-resources", "/host/var/lib/kubelet/cpu_manager_state"
    }  # fmt: skip


def test_agent_admission_policy_binds_the_agent_to_its_node(rendered: list[Doc]) -> None:
    (policy,) = by_kind(rendered, "ValidatingAdmissionPolicy")
    (binding,) = by_kind(rendered, "ValidatingAdmissionPolicyBinding")
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert set(rule["resources"]) >= {"nodes", "pods"} and rule["operations"] == ["*"]
    # Only the agent's requests, by its ServiceAccount's user name.
    account = one(rendered, "DaemonSet", "agent")["spec"]["template"]["spec"]["serviceAccountName"]
    assert [c["expression"] for c in spec["matchConditions"]] == [
        f"request.userInfo.username == 'system:serviceaccount:{NAMESPACE}:{account}'"
    ]
    variables = {v["name"]: v["expression"] for v in spec["variables"]}
    assert "'authentication.kubernetes.io/node-name'" in variables["nodeNames"]
    rules = " ".join(v["expression"] for v in spec["validations"])
    assert "oldObject.metadata.name == variables.node" in rules
    assert "oldObject.spec.?nodeName.orValue('') == variables.node" in rules
    assert "object.spec == oldObject.spec" in rules
    assert "startsWith('pinserve.io/')" in variables["foreignLabels"] + variables["foreignAnnotations"]
    # Renamed ServiceAccount, other namespace: the policy follows.
    docs = render("serviceAccount.agent.name=node-agent")
    (renamed,) = by_kind(docs, "ValidatingAdmissionPolicy")
    assert f"system:serviceaccount:{NAMESPACE}:node-agent'" in renamed["spec"]["matchConditions"][0]["expression"]
    off = render("agent.admissionPolicy.enabled=false")
    assert not by_kind(off, "ValidatingAdmissionPolicy") and not by_kind(off, "ValidatingAdmissionPolicyBinding")
    assert by_kind(off, "DaemonSet")


# ---------------------------------------------------------------- generated files and docs


def test_chart_crds_are_copies_of_the_top_level_crds() -> None:
    copies = sorted(p.name for p in (CHART / "crds").iterdir())
    assert copies == sorted(p.name for p in (ROOT / "crds").iterdir())
    assert CRD_PATH.name in copies and "kopf-peering.yaml" in copies
    for name in copies:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/pinserve/crds/{name} is stale: run tools/gen_manifests.sh (make manifests)"
        )


def test_install_yaml_is_current() -> None:
    proc = subprocess.run(
        ["bash", str(GEN), "--stdout"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "HELM": helm()},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == INSTALL.read_text(), (
        "manifests/install.yaml is stale: run tools/gen_manifests.sh (make manifests)"
    )
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert docs[0] == {
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": {"app.kubernetes.io/part-of": "pinserve"}},
    }  # fmt: skip
    assert [d["kind"] for d in docs].count("CustomResourceDefinition") == 3


FREE_FORM = {
    "resources", "podSecurityContext", "securityContext", "nodeSelector", "tolerations", "affinity",
    "podAnnotations", "podLabels", "annotations", "updateStrategy", "commonLabels",
}  # fmt: skip


def value_paths(values: Doc, prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in FREE_FORM:
            paths += value_paths(value, f"{path}.")
        else:
            paths.append(path)
    return paths


def test_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    missing = [p for p in value_paths(values) if f"`{p}`" not in readme]
    assert not missing, f"charts/pinserve/README.md does not document: {missing}"


def render_notes(tmp_path: Path, *set_args: str) -> str:
    """NOTES.txt as `helm install` would print it (helm template skips it): render it through a
    ConfigMap in a scratch copy of the chart."""
    chart = tmp_path / "pinserve"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes_check.tpl").write_text(
        '{{- define "pinserve.notesCheck" -}}\n' + notes + "{{- end -}}\n"
    )
    (chart / "templates" / "notes-check.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ include "pinserve.notesCheck" . | toJson }}\n'
    )
    args = ["template", "pinserve", str(chart), "--namespace", NAMESPACE, "--show-only", "templates/notes-check.yaml"]
    for value in set_args:
        args += ["--set", value]
    text = yaml.safe_load(run_helm(*args).stdout)["data"]["notes"]
    assert isinstance(text, str)
    return text


def test_notes_show_a_first_modelserver(tmp_path: Path) -> None:
    notes = render_notes(tmp_path)
    assert "daemonset/pinserve-agent" in notes
    assert "all namespaces" in notes
    assert "kubectl get msrv" in notes
    # The inline example is a valid ModelServer.
    # Copy-pasteable: the heredoc's terminator starts its line.
    example = notes.split("kubectl apply -f - <<'YAML'\n", 1)[1].split("\nYAML\n", 1)[0]
    doc = yaml.safe_load(example)
    assert doc["kind"] == "ModelServer"
    assert api.parse_modelserver(doc).spec.resources.physical_cores == 1
    without_agent = render_notes(tmp_path / "b", "agent.enabled=false", "operator.namespaces={a,b}")
    assert "Agent:    disabled" in without_agent
    assert "Watching: a, b" in without_agent
