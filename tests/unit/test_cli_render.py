"""`pinserve render` and `pinserve topology`, in-process, plus one run of the installed entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pinserve.cli import main
from pinserve.topology import read_topology
from snapshots import snapshot_root

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))
OWN_SPECS = {
    "own-uri": {"model": {"uri": "https://x/m.tgz"}, "resources": {"physicalCores": 3, "memory": "2Gi"}},
    "own-selector": {"model": {"image": "registry.example/m:1"}, "resources": {"physicalCores": 2},
                     "placement": {"nodeSelector": {"pool": "inference"}, "numa": "Prefer"}},
}
THREAD_ENV = {"omp": "OMP_NUM_THREADS", "intraOp": "TENSORFLOW_INTRA_OP_PARALLELISM",
              "interOp": "TENSORFLOW_INTER_OP_PARALLELISM", "kmpAffinity": "KMP_AFFINITY",
              "kmpBlocktime": "KMP_BLOCKTIME"}


def modelserver_yaml(name: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump({"apiVersion": "pinserve.io/v1alpha1", "kind": "ModelServer",
                           "metadata": {"name": name}, "spec": spec})


def spec_files(tmp_path: Path) -> list[Path]:
    files = list(EXAMPLES)
    for name, spec in OWN_SPECS.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(modelserver_yaml(name, spec))
        files.append(path)
    return files


def render(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, Any]], str, str]:
    code = main(["render", *args])
    out, err = capsys.readouterr()
    docs = [d for d in yaml.safe_load_all(out) if d] if code == 0 else []
    return code, docs, out, err


def aliases(text: str) -> list[Any]:
    """YAML anchors and aliases in a stream (kubectl copes; people reading the output do not)."""
    return [e for e in yaml.parse(text) if isinstance(e, yaml.AliasEvent) or getattr(e, "anchor", None)]


def deployments(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "Deployment"]


def all_containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    pod = deployment["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def server_env(deployment: dict[str, Any]) -> dict[str, str]:
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in server["env"]}


def test_the_examples_exist() -> None:
    assert {p.stem for p in EXAMPLES} >= {"rfcn", "mask-rcnn", "unet-3d", "deeplabv3", "demo"}


def test_render_every_spec(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for path in spec_files(tmp_path):
        source = yaml.safe_load(path.read_text())
        spec = source["spec"]
        cores = spec["resources"]["physicalCores"]
        code, docs, out, err = render(capsys, "-f", str(path))
        assert code == 0, f"{path.name}: {err}"
        assert [d["kind"] for d in docs] == ["ConfigMap", "Service", "Deployment"], path.name
        [deployment] = deployments(docs)
        inits = {c["name"] for c in deployment["spec"]["template"]["spec"].get("initContainers", [])}
        for container in all_containers(deployment):
            res = container["resources"]
            assert res["requests"] == res["limits"], (path.name, container["name"])
            # Whole CPUs for the server (pinned); init containers run in the shared pool.
            assert str(res["requests"]["cpu"]).isdigit() != (container["name"] in inits)
        server = deployment["spec"]["template"]["spec"]["containers"][0]
        # Without a topology, render assumes one thread per core: CPUs == physical cores.
        assert server["resources"]["requests"]["cpu"] == str(cores)
        env = server_env(deployment)
        assert env["PINSERVE_PLANNED_CORES"] == str(cores)
        threading = spec.get("threading") or {}
        for field, var in THREAD_ENV.items():
            if field in threading:
                assert env[var] == str(threading[field]), (path.name, var)
            elif var not in {e["name"] for e in (spec.get("server") or {}).get("env", [])}:
                assert var not in env, (path.name, var)
        # The notes on stderr spell out the thread plan: OMP/intra-op follow the cores.
        name = source["metadata"]["name"]
        intra = min(threading.get("intraOp", cores), cores)
        assert f"# {name}: {cores} physical cores x 1 thread(s) = {cores} CPUs; OMP/intra-op {intra}" in err
        assert not aliases(out), path.name


def test_render_several_documents_and_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    text = "---\n".join(modelserver_yaml(n, s) for n, s in OWN_SPECS.items())
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(text))
    code, docs, _, err = render(capsys, "-f", "-")
    assert code == 0, err
    assert [d["metadata"]["name"] for d in deployments(docs)] == list(OWN_SPECS)


def test_no_yaml_aliases_even_for_shared_values(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "shared.yaml"
    path.write_text(modelserver_yaml("shared", {
        "model": {"uri": "https://x/m.tgz"}, "resources": {"physicalCores": 2},
        "placement": {"tolerations": [{"key": "a", "operator": "Exists"}],
                      "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                          "nodeSelectorTerms": [{"matchExpressions": [{"key": "z", "operator": "Exists"}]}]}}}}}))
    code, docs, out, err = render(capsys, "-f", str(path))
    assert code == 0, err
    assert not aliases(out)
    assert docs


@pytest.mark.parametrize(("snapshot", "factor"), [("16em64t-4s2c2t", 2), ("32intel64-2p8co2t+8ve", 2),
                                                  ("8em64t-2s2ca2c", 1), ("64amd64-4s2n4ca2co", 1)])
def test_render_with_a_snapshot_topology(capsys: pytest.CaptureFixture[str], snapshot: str, factor: int) -> None:
    demo = REPO / "manifests" / "examples" / "demo.yaml"
    code, docs, _, err = render(capsys, "-f", str(demo), "--topology", str(snapshot_root(snapshot)))
    assert code == 0, err
    [deployment] = deployments(docs)
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    assert server["resources"]["requests"]["cpu"] == str(1 * factor)
    assert server_env(deployment)["PINSERVE_PLANNED_CORES"] == "1"
    kmp = "granularity=fine,compact,1,0" if factor == 2 else "granularity=fine,compact"
    assert f"KMP_AFFINITY={kmp}" in err
    assert "no CPU topology" not in err


def test_render_with_a_topology_json_or_node(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    machine = read_topology(snapshot_root("16em64t-4s2c2t"))
    annotation = tmp_path / "topology.json"
    annotation.write_text(json.dumps(machine.to_dict()))
    node = tmp_path / "node.json"
    node.write_text(json.dumps({"kind": "Node", "metadata": {"name": "n", "annotations": {
        "pinserve.io/cpu-topology": json.dumps(machine.to_dict())}}}))
    spec = tmp_path / "ms.yaml"
    spec.write_text(modelserver_yaml("m", {"model": {"uri": "https://x/m"}, "resources": {"physicalCores": 4}}))
    for source in (annotation, node):
        code, docs, _, err = render(capsys, "-f", str(spec), "--topology", str(source))
        assert code == 0, err
        assert deployments(docs)[0]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "8"


def test_render_too_big_for_the_topology(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = tmp_path / "ms.yaml"
    spec.write_text(modelserver_yaml("m", {"model": {"uri": "https://x/m"}, "resources": {"physicalCores": 64}}))
    code, _, out, err = render(capsys, "-f", str(spec), "--topology", str(snapshot_root("8em64t-2s2ca2c")))
    assert code == 2 and out == ""
    assert "spec.resources.physicalCores" in err and "has 8 physical cores, 64 requested" in err


INVALID = [
    ("zero cores", modelserver_yaml("m", {"model": {"uri": "https://x"}, "resources": {"physicalCores": 0}}),
     "spec.resources.physicalCores"),
    ("bad memory", modelserver_yaml("m", {"model": {"uri": "https://x"},
                                          "resources": {"physicalCores": 1, "memory": "8 GB"}}),
     "spec.resources.memory"),
    ("two sources", modelserver_yaml("m", {"model": {"uri": "https://x", "image": "i"},
                                           "resources": {"physicalCores": 1}}), "spec.model"),
    ("thread bound", modelserver_yaml("m", {"model": {"uri": "https://x"}, "resources": {"physicalCores": 1},
                                            "threading": {"omp": 5}}), "spec.threading.omp"),
    ("long name", modelserver_yaml("m" * 49, {"model": {"uri": "https://x"}, "resources": {"physicalCores": 1}}),
     "metadata.name"),
    ("wrong kind", "kind: Deployment\nmetadata: {name: x}\nspec: {}\n", "kind"),
    ("no spec", "kind: ModelServer\nmetadata: {name: x}\n", "spec"),
    ("bad yaml", "kind: ModelServer\nspec: [unclosed\n", "error"),
    ("a list", "- 1\n- 2\n", "expected a ModelServer"),
    ("spec not an object", "kind: ModelServer\nmetadata: {name: x}\nspec: hello\n", "spec"),
]


@pytest.mark.parametrize(("text", "named"), [i[1:] for i in INVALID], ids=[i[0] for i in INVALID])
def test_invalid_input_exits_2_naming_the_field(capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str,
                                                named: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, _, out, err = render(capsys, "-f", str(path))
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and named in err
    assert "Traceback" not in err


@pytest.mark.parametrize("args", [["-f", "/nonexistent/ms.yaml"],
                                  ["-f", str(REPO / "manifests" / "examples" / "demo.yaml"),
                                   "--topology", "/nonexistent/topology.json"]])
def test_missing_files_exit_2(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, _, _, err = render(capsys, *args)
    assert code == 2 and "/nonexistent" in err


# -- pinserve topology ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("snapshot", "expect"), [
    ("16em64t-4s2c2t", {"sockets": 4, "numaNodes": 1, "physicalCores": 8, "logicalCpus": 16, "threadsPerCore": 2}),
    ("32intel64-2p8co2t+8ve", {"sockets": 2, "numaNodes": 2, "physicalCores": 16, "logicalCpus": 32,
                               "threadsPerCore": 2}),
    ("64amd64-4s2n4ca2co", {"sockets": 4, "numaNodes": 8, "physicalCores": 64, "logicalCpus": 64,
                            "threadsPerCore": 1}),
    ("8em64t-2s2ca2c", {"sockets": 2, "numaNodes": 1, "physicalCores": 8, "logicalCpus": 8, "threadsPerCore": 1}),
])
def test_topology_json(capsys: pytest.CaptureFixture[str], snapshot: str, expect: dict[str, int]) -> None:
    assert main(["topology", "--sysfs-root", str(snapshot_root(snapshot)), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {k: report[k] for k in expect} == expect
    cores = report["cores"]
    assert len(cores) == expect["physicalCores"]
    assert sum(len(c["cpus"]) for c in cores) == expect["logicalCpus"]
    assert len({c["socket"] for c in cores}) == expect["sockets"]
    assert all(isinstance(c["socket"], int) and all(isinstance(x, int) for x in c["cpus"]) for c in cores)
    rec = report["recommended"]
    assert rec["OMP_NUM_THREADS"] == rec["TENSORFLOW_INTRA_OP_PARALLELISM"] == expect["physicalCores"]
    assert rec["cpuRequest"] == expect["logicalCpus"]
    assert rec["KMP_AFFINITY"].endswith(",1,0") == (expect["threadsPerCore"] == 2)


def test_topology_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "--sysfs-root", str(snapshot_root("16em64t-4s2c2t"))]) == 0
    out = capsys.readouterr().out
    assert "physical cores:   8" in out and "SMT on" in out
    assert "OMP_NUM_THREADS=8" in out and "KMP_AFFINITY=granularity=fine,compact,1,0" in out


def test_topology_of_a_missing_root(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["topology", "--sysfs-root", str(tmp_path / "nothing")]) == 2
    assert "error:" in capsys.readouterr().err


# -- the installed entry point ----------------------------------------------------------------------------


def test_entry_point_renders_an_example() -> None:
    exe = Path(sys.executable).with_name("pinserve")
    assert exe.is_file(), f"{exe} missing: is the package installed in the venv?"
    demo = REPO / "manifests" / "examples" / "demo.yaml"
    result = subprocess.run([str(exe), "render", "-f", str(demo)], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(result.stdout) if d]
    assert kinds == ["ConfigMap", "Service", "Deployment"]
    invalid = "kind: ModelServer\nmetadata: {name: m}\nspec: {resources: {}}\n"
    bad = subprocess.run([str(exe), "render", "-f", "-"], input=invalid, capture_output=True, text=True,
                         timeout=120, check=False)
    assert bad.returncode == 2 and "spec." in bad.stderr
