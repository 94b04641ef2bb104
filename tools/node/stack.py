"""pinserve on the local real node, as a user runs it: control plane, real node, `helm install`, a model.

``RealNodeStack`` is what `make demo` (without Docker) and the e2e tier's real-node backend drive:

1. a control plane with no simulated nodes (tools/cluster.py) and the real node (tools/node/node.py);
2. ``helm install`` of charts/pinserve with the images built here, the operator and the agent on the
   node's network (no kube-proxy here) talking to the API server on loopback, the benchmark client on
   0.5 CPU in the shared pool (the node has 2 CPUs: CPU 0 shared, CPU 1 for one pinned pod) and
   targeting the server pod by IP (no cluster DNS here), and the **TF Serving stand-in** as the
   default server image (TF Serving's binary cannot be had here; tools/standin/README.md);
3. the demo ModelServer (manifests/examples/demo.yaml) with its SavedModel in an image
   (``spec.model.image``) instead of an HTTP server.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from tools.cluster import ClusterError, LocalCluster, cache_root, log
from tools.kubeutil import Kube, free_ports
from tools.node.images import Image, ImageBuilder
from tools.node.node import LocalNode

REPO = Path(__file__).resolve().parents[2]
RELEASE = "pinserve"
NAMESPACE = "pinserve-system"
DEMO_NAMESPACE = "default"
DEMO_NAME = "demo"


class RealNodeStack:
    def __init__(self, state_dir: Path | None = None) -> None:
        self.cluster = LocalCluster(state_dir or cache_root() / "realnode")
        self.node = LocalNode(self.cluster)
        self.images: dict[str, Image] = {}

    @property
    def kube(self) -> Kube:
        return self.cluster.kube()

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120, input_text: str | None = None) -> str:
        return self.kube.kubectl(*args, check=check, timeout=timeout, input=input_text).stdout

    def up(self) -> None:
        started = time.monotonic()
        self.cluster.up(nodes=[])
        log(f"stack: control plane ready after {time.monotonic() - started:.0f}s")
        self.images = self.node.up()
        log(f"stack: real node ready after {time.monotonic() - started:.0f}s")

    def install_chart(self, *, timeout: str = "300s") -> None:
        state = self.cluster.load_state()
        if state is None:
            raise ClusterError("the control plane is not running")
        images = self.images
        healthz_port, metrics_port = free_ports(2)
        values = {
            "operator": {
                "image": _repo_tag(images["operator"]) | {"pullPolicy": "IfNotPresent"},
                "hostNetwork": True,
                "healthz": {"host": "127.0.0.1", "port": healthz_port},
                # On the host's network: a free loopback port (the chart binds 127.0.0.1 with hostNetwork).
                "metrics": {"port": metrics_port},
                "resyncSeconds": 20,
            },
            "agent": {"hostNetwork": True, "kubeletDir": str(self.node.layout.kubelet_dir),
                      "intervalSeconds": 30},
            "apiServer": {"host": "127.0.0.1", "port": str(state.ports["apiserver"])},
            "server": {"image": images["standin"].ref},
            "bench": {"image": _repo_tag(images["bench"]), "cpu": "500m", "target": "pod"},
        }
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
            yaml.safe_dump(values, handle)
        # Helm installs crds/ only on a first install: a release from before a CRD was added (kopf's peering
        # CRDs) would upgrade without it, and the operator would wait for it forever.
        self.kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "charts/pinserve/crds"))
        log("stack: helm upgrade --install pinserve charts/pinserve")
        proc = subprocess.run(
            [str(self.kube.bin_dir / "helm"), "upgrade", "--install", RELEASE, str(REPO / "charts/pinserve"),
             "--namespace", NAMESPACE, "--create-namespace", "--wait", "--timeout", timeout,
             "--values", handle.name],
            env=self.kube.env(), capture_output=True, text=True, check=False)
        Path(handle.name).unlink()
        if proc.returncode != 0:
            raise ClusterError(f"helm install failed: {proc.stderr.strip()}\n{self.describe_pods(NAMESPACE)}")

    def model_image(self) -> Image:
        """The demo's half_plus_two SavedModel in a busybox image, imported into the node."""
        from tools.make_demo_model import build_dir  # noqa: PLC0415  (TensorFlow: only when needed)

        model_dir = cache_root() / "realnode-models" / "half_plus_two"
        if not (model_dir / "saved_model.pb").is_file():
            build_dir(model_dir)
        builder = ImageBuilder()
        try:
            image = builder.model("half-plus-two", model_dir)
        finally:
            builder.buildah.release()
        self.node.import_image(image)
        return image

    def demo_modelserver(self, model: Image, *, tuned: bool = False, name: str = DEMO_NAME) -> dict[str, Any]:
        """manifests/examples/demo.yaml with its model taken from an image instead of an HTTP server.

        ``tuned``: with spec.tuning as manifests/examples/demo-tuned.yaml has it (the throughput objective: on the one
        pinnable CPU the threads cannot vary, batching can), tuned before it serves (beforeServing: the trials
        need the only CPU the server would hold)."""
        ms: dict[str, Any] = yaml.safe_load((REPO / "manifests/examples/demo.yaml").read_text())
        source = ms["spec"]["model"]
        source.pop("uri", None)
        source["image"] = model.ref
        source["path"] = "model"  # the image holds the SavedModel at /model
        # The stand-in is a Python process with TensorFlow loaded (~400 MB), unlike TF Serving's binary.
        ms["spec"]["resources"]["memory"] = "1Gi"
        # The server is the chart's default here (server.image: the stand-in), not the example's stock image.
        ms["spec"].get("server", {}).pop("image", None)
        ms["metadata"]["name"] = name
        if tuned:
            example = yaml.safe_load((REPO / "manifests/examples/demo-tuned.yaml").read_text())
            ms["spec"]["tuning"] = {**example["spec"]["tuning"], "beforeServing": True}
        return ms

    def apply(self, obj: dict[str, Any], namespace: str = DEMO_NAMESPACE) -> None:
        self.kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))

    def wait_for(self, condition: str, name: str = DEMO_NAME, timeout: int = 600) -> None:
        log(f"stack: waiting for {name} {condition} (up to {timeout}s)")
        proc = self.kube.kubectl("wait", "-n", DEMO_NAMESPACE, f"modelserver/{name}",
                                 f"--for=condition={condition}", f"--timeout={timeout}s", check=False,
                                 timeout=timeout + 30)
        if proc.returncode != 0:
            status = self.kubectl("get", "-n", DEMO_NAMESPACE, f"modelserver/{name}", "-o",
                                  "jsonpath={.status.conditions}", check=False)
            raise ClusterError(f"{name} never became {condition}: {status}\n{self.describe_pods(DEMO_NAMESPACE)}")

    def describe_pods(self, namespace: str) -> str:
        return self.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False)

    def down(self) -> None:
        """Uninstall first (so the kubelet tears the pods down through CNI, and nothing recreates them),
        then the node, then the control plane."""
        if self.cluster.healthy():
            self.kube.kubectl("delete", "modelservers", "--all", "-A", "--wait=false", check=False)
            subprocess.run([str(self.kube.bin_dir / "helm"), "uninstall", RELEASE, "--namespace", NAMESPACE,
                            "--wait", "--timeout", "120s"], env=self.kube.env(), capture_output=True, check=False)
        self.node.down()
        self.cluster.down()


def _repo_tag(image: Image) -> dict[str, str]:
    repository, tag = image.ref.rsplit(":", 1)
    return {"repository": repository, "tag": tag}
