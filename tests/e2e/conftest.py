"""One e2e suite, two backends: kind where a Docker engine answers, else the local real node.

Both run the flow a user runs: `helm install` of the chart, the demo ModelServer served by a real
server on exclusive cores, the benchmark Job, status. Backends:

- ``kind``: tools/demo_kind.py; the real ``tensorflow/serving`` image.
- ``realnode``: tools/node (a real kubelet with the static CPU manager on containerd, joined to a
  local control plane); the server is the **TF Serving stand-in** (tools/standin), because TF
  Serving's binary is in no registry this machine reaches.

Skipped, with the reason, only where neither can run (no Docker, and not root on Linux). In CI
(CI=true) that is a failure instead. PINSERVE_E2E_BACKEND=kind|realnode forces one. A real-node stack
that is already running (`make demo`) is reused and left running; one started here is torn down.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_support import Backend, KindBackend, RealNodeBackend, choose_backend


def _kind() -> Iterator[KindBackend]:
    from tools import demo_kind  # noqa: PLC0415

    demo_kind.create_cluster()
    demo_kind.build_images()
    demo_kind.install_chart()
    demo_kind.serve_demo_model()
    demo_kind.apply_demo()
    demo_kind.wait_for("Ready")
    demo_kind.wait_for("Benchmarked")
    yield KindBackend(module=demo_kind)
    demo_kind.down()


def _realnode() -> Iterator[RealNodeBackend]:
    from tools.node.stack import RealNodeStack  # noqa: PLC0415

    stack = RealNodeStack()
    already = stack.cluster.healthy() and stack.node.running()
    try:
        stack.up()
        stack.install_chart()
        model = stack.model_image()
        # A demo left running (`make demo`) holds a status measured by older images: measure afresh.
        stack.kubectl("delete", "-n", "default", "modelserver/demo", "--ignore-not-found", "--wait=true")
        stack.apply(stack.demo_modelserver(model))
        stack.wait_for("Ready")
        stack.wait_for("Benchmarked", timeout=900)
    except BaseException:
        _dump_logs(stack)
        if not already:
            stack.down()
        raise
    backend = RealNodeBackend(stack=stack, started_here=not already, extra={"model": model})
    yield backend
    if not already:
        stack.down()


def _dump_logs(stack: Any) -> None:
    """What a failed setup leaves to read: pods, events, the operator's log."""
    for args in (("get", "pods", "-A", "-o", "wide"), ("get", "events", "-A", "--sort-by=.lastTimestamp"),
                 ("logs", "-n", "pinserve-system", "deploy/pinserve-operator", "--tail=60")):
        print(f"--- kubectl {' '.join(args)}\n{stack.kubectl(*args, check=False)}")


@pytest.fixture(scope="session")
def backend() -> Iterator[Backend]:
    name, why = choose_backend()
    if name is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"e2e cannot run here and CI requires it: {why}", pytrace=False)
        pytest.skip(f"e2e needs a Docker engine or root on Linux: {why}")
    print(f"e2e backend: {name} ({why})")
    yield from (_kind() if name == "kind" else _realnode())
