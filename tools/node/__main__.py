"""The local real node: a real kubelet with the static CPU manager on containerd, joined to a local
control plane.

    python -m tools.node up        control plane (no simulated nodes) + containerd + kubelet + images
    python -m tools.node demo      up, helm install, the demo ModelServer tuned, served and benchmarked
    python -m tools.node down      stop everything and give the host back as it was
    python -m tools.node status    what runs, as JSON
    python -m tools.node images    build (or reuse) the images only
    python -m tools.node check     exit 0 if the real node can run here, else print why and exit 1

Needs root on Linux; installs containerd, runc, containernetworking-plugins, buildah, busybox-static,
debootstrap and iptables with apt-get when missing. State lives in ~/.cache/pinserve/realnode.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pinserve.tuning_report import render_table
from tools.cluster import ClusterError
from tools.node.images import ImageBuilder, build_node_images
from tools.node.node import unsupported_reason
from tools.node.stack import DEMO_NAME, DEMO_NAMESPACE, RealNodeStack


def demo(stack: RealNodeStack) -> None:
    started = time.monotonic()
    stack.up()
    stack.install_chart()
    model = stack.model_image()
    print("== kubectl apply -f manifests/examples/demo.yaml, with manifests/examples/demo-tuned.yaml's spec.tuning "
          "(model from an image; server: the TF Serving stand-in; beforeServing: the node has one pinnable CPU)",
          flush=True)
    stack.apply(stack.demo_modelserver(model, tuned=True))
    stack.wait_for("Tuned", timeout=900)
    stack.wait_for("Ready")
    stack.wait_for("Benchmarked", timeout=900)
    print(stack.kubectl("get", "modelservers", "-A", "-o", "wide"), flush=True)
    print(f"== kubectl get modelserver {DEMO_NAME} -o json | pinserve tune-report", flush=True)
    print(render_table(json.loads(stack.kubectl("get", "-n", DEMO_NAMESPACE, f"modelserver/{DEMO_NAME}", "-o",
                                                "json"))["status"]["tuning"]), flush=True)
    pods = json.loads(stack.kubectl("get", "pods", "-n", DEMO_NAMESPACE, "-l",
                                    f"pinserve.io/modelserver={DEMO_NAME},app.kubernetes.io/component=server",
                                    "-o", "json"))
    for pod in pods["items"]:
        name = pod["metadata"]["name"]
        log_text = stack.kubectl("logs", "-n", DEMO_NAMESPACE, name, "-c", "server", check=False)
        lines = [row for row in log_text.splitlines() if row.startswith("pinserve:")]
        line = lines[0] if lines else "start-script line not found"
        print(f"{name}: {line}", flush=True)
    print(f"== done in {time.monotonic() - started:.0f}s; `make demo-down` stops it and restores the host", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.node", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "demo", "down", "status", "images", "check"))
    parser.add_argument("--state-dir", type=Path, default=None, help="default: ~/.cache/pinserve/realnode")
    args = parser.parse_args(argv)
    if args.command == "check":
        reason = unsupported_reason()
        print(reason or "the real node can run here")
        return 1 if reason else 0
    stack = RealNodeStack(args.state_dir)
    try:
        if args.command == "up":
            stack.up()
            print(stack.cluster.env_text(), end="")
        elif args.command == "demo":
            demo(stack)
        elif args.command == "down":
            stack.down()
        elif args.command == "status":
            print(json.dumps({"cluster": stack.cluster.status(), "node": stack.node.status()}, indent=2))
        elif args.command == "images":
            for image in build_node_images(ImageBuilder()).values():
                print(f"{image.ref}\t{image.archive}")
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.command in ("up", "demo"):
            print("what was started is still running: `python -m tools.node down` (or `make demo-down`) stops it "
                  "and gives the host back", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
