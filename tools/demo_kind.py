"""The real thing on a laptop: kind with the static CPU manager, pinserve from its Helm chart,
a small real SavedModel served by a published TensorFlow Serving image, and the benchmark in status.

The server image is the published ``tensorflow/serving:<version>`` (SERVER_IMAGE), set as the chart's
``server.image`` and in manifests/examples/demo.yaml: pinserve's default, ``tensorflow/serving:mkl``, is
not on Docker Hub (Intel's guides build it from TF Serving's Dockerfile.mkl).

Usage: python -m tools.demo_kind up|down      (needs Docker; `make demo` picks this when it can)
tests/e2e drives the same functions.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLUSTER = "pinserve"
NAMESPACE = "pinserve-system"
DEMO_NAMESPACE = "default"
VERSION = "0.1.0"
OPERATOR_IMAGE = f"pinserve/operator:{VERSION}"
BENCH_IMAGE = f"pinserve/bench:{VERSION}"
SERVER_IMAGE = "tensorflow/serving:2.18.0"


def say(message: str) -> None:
    print(f"== {message}", flush=True)


def run(*args: str, capture: bool = False, check: bool = True, input_text: str | None = None) -> str:
    result = subprocess.run(args, check=check, text=True, input=input_text,
                            stdout=subprocess.PIPE if capture else None)
    return result.stdout if capture else ""


def bin_dir() -> Path:
    full = run("bash", str(REPO / "tools/testbin.sh"), capture=True).strip().splitlines()[-1]
    run("bash", str(REPO / "tools/testbin.sh"), "kind", capture=True)
    return Path(full)


def tool(name: str) -> str:
    return str(bin_dir() / name)


def kubectl(*args: str, capture: bool = True, check: bool = True, input_text: str | None = None) -> str:
    return run(tool("kubectl"), "--context", f"kind-{CLUSTER}", *args, capture=capture, check=check,
               input_text=input_text)


def create_cluster() -> None:
    existing = run(tool("kind"), "get", "clusters", capture=True).split()
    if CLUSTER in existing:
        say(f"kind cluster {CLUSTER} exists; reusing it")
        return
    say("creating the kind cluster (static CPU manager, full-pcpus-only, CPU 0 reserved)")
    run(tool("kind"), "create", "cluster", "--config", str(REPO / "tools/kind/cluster.yaml"), "--wait", "120s")


def build_images() -> None:
    for target, image in (("operator", OPERATOR_IMAGE), ("bench", BENCH_IMAGE)):
        say(f"docker build --target {target} -t {image}")
        run("docker", "build", "--target", target, "-t", image, str(REPO))
        run(tool("kind"), "load", "docker-image", image, "--name", CLUSTER)


def install_chart() -> None:
    # Helm installs crds/ only on a first install; an existing demo cluster would miss new CRDs (kopf peering).
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "charts/pinserve/crds"))
    say("helm install pinserve charts/pinserve")
    run(tool("helm"), "--kube-context", f"kind-{CLUSTER}", "upgrade", "--install", "pinserve",
        str(REPO / "charts/pinserve"), "--namespace", NAMESPACE, "--create-namespace", "--wait",
        "--set", "operator.image.repository=pinserve/operator", "--set", f"operator.image.tag={VERSION}",
        "--set", "operator.image.pullPolicy=IfNotPresent",
        "--set", "bench.image.repository=pinserve/bench", "--set", f"bench.image.tag={VERSION}",
        "--set", f"server.image={SERVER_IMAGE}")


def serve_demo_model() -> None:
    """A small real SavedModel, served over HTTP inside the cluster for spec.model.uri."""
    say("building the demo SavedModel and serving it at pinserve-demo-models:8000")
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "half_plus_two.tar.gz"
        run(sys.executable, str(REPO / "tools/make_demo_model.py"), str(archive))
        manifest = kubectl("create", "configmap", "pinserve-demo-models", "-n", NAMESPACE,
                           f"--from-file={archive}", "--dry-run=client", "-o", "yaml")
        kubectl("apply", "-f", "-", input_text=manifest)
    kubectl("apply", "-f", "-", input_text=json.dumps({
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "apps/v1", "kind": "Deployment",
             "metadata": {"name": "pinserve-demo-models", "namespace": NAMESPACE},
             "spec": {"selector": {"matchLabels": {"app": "pinserve-demo-models"}},
                      "template": {"metadata": {"labels": {"app": "pinserve-demo-models"}}, "spec": {
                          "containers": [{"name": "http", "image": OPERATOR_IMAGE,
                                          "command": ["python", "-m", "http.server", "8000",
                                                      "--directory", "/models"],
                                          "ports": [{"containerPort": 8000}],
                                          "volumeMounts": [{"name": "m", "mountPath": "/models"}]}],
                          "volumes": [{"name": "m", "configMap": {"name": "pinserve-demo-models"}}]}}}},
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "pinserve-demo-models", "namespace": NAMESPACE},
             "spec": {"selector": {"app": "pinserve-demo-models"}, "ports": [{"port": 8000}]}},
        ]}))


def apply_demo() -> None:
    say("kubectl apply -f manifests/examples/demo.yaml")
    kubectl("apply", "-n", DEMO_NAMESPACE, "-f", str(REPO / "manifests/examples/demo.yaml"))


def wait_for(condition: str, name: str = "demo", timeout: int = 900) -> None:
    say(f"waiting for {condition} (up to {timeout}s)")
    kubectl("wait", "-n", DEMO_NAMESPACE, f"modelserver/{name}", f"--for=condition={condition}",
            f"--timeout={timeout}s", capture=False)


def show() -> None:
    print(kubectl("get", "modelservers", "-A", "-o", "wide"))
    pods = json.loads(kubectl("get", "pods", "-n", DEMO_NAMESPACE, "-l",
                              "pinserve.io/modelserver=demo,app.kubernetes.io/component=server", "-o", "json"))
    for pod in pods["items"]:
        name = pod["metadata"]["name"]
        log = kubectl("logs", "-n", DEMO_NAMESPACE, name, "-c", "server", check=False)
        chosen = [line for line in log.splitlines() if line.startswith("pinserve:")]
        print(f"{name}: {chosen[0] if chosen else 'start-script line not found'}")


def up() -> None:
    started = time.monotonic()
    create_cluster()
    build_images()
    install_chart()
    serve_demo_model()
    apply_demo()
    wait_for("Ready")
    wait_for("Benchmarked")
    show()
    say(f"done in {time.monotonic() - started:.0f}s; `make demo-down` deletes the kind cluster")


def down() -> None:
    run(tool("kind"), "delete", "cluster", "--name", CLUSTER, check=False)


if __name__ == "__main__":
    {"up": up, "down": down}[sys.argv[1] if len(sys.argv) > 1 else "up"]()
