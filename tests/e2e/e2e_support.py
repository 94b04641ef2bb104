"""Backends and helpers of the e2e suite (see conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

DEMO = "demo"


def _docker_reason() -> str | None:
    if shutil.which("docker") is None:
        return "the docker client is not installed"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    return None if probe.returncode == 0 else "no Docker engine answers `docker info`"


def choose_backend() -> tuple[str | None, str]:
    """(backend or None, why)."""
    from tools.node.node import unsupported_reason  # noqa: PLC0415

    forced = os.environ.get("PINSERVE_E2E_BACKEND", "").strip()
    docker = _docker_reason()
    real = unsupported_reason()
    if forced == "kind":
        return (None, f"kind forced but {docker}") if docker else ("kind", "forced")
    if forced == "realnode":
        return (None, f"realnode forced but {real}") if real else ("realnode", "forced")
    if docker is None:
        return "kind", "a Docker engine answers"
    if real is None:
        return "realnode", f"{docker}; root on Linux: the local real node"
    return None, f"{docker}, and {real}"


class Backend(Protocol):
    name: str
    namespace: str

    def kubectl(self, *args: str, check: bool = True, input_text: str | None = None) -> str: ...

    def wait_for(self, condition: str, name: str, timeout: int = 600) -> None: ...


@dataclass
class KindBackend:
    name: str = "kind"
    namespace: str = "default"
    module: Any = None

    def kubectl(self, *args: str, check: bool = True, input_text: str | None = None) -> str:
        out: str = self.module.kubectl(*args, check=check, input_text=input_text)
        return out

    def wait_for(self, condition: str, name: str, timeout: int = 600) -> None:
        self.module.wait_for(condition, name=name, timeout=timeout)


@dataclass
class RealNodeBackend:
    stack: Any
    name: str = "realnode"
    namespace: str = "default"
    started_here: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def kubectl(self, *args: str, check: bool = True, input_text: str | None = None) -> str:
        out: str = self.stack.kubectl(*args, check=check, input_text=input_text)
        return out

    def wait_for(self, condition: str, name: str, timeout: int = 600) -> None:
        self.stack.wait_for(condition, name=name, timeout=timeout)


def modelserver(backend: Backend, name: str = DEMO) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(backend.kubectl("get", "-n", backend.namespace, f"modelserver/{name}",
                                                      "-o", "json"))
    return data


def exec_in(backend: Backend, pod: str, container: str, script: str) -> str:
    return backend.kubectl("exec", "-n", backend.namespace, pod, "-c", container, "--", "sh", "-c", script)


def start_line(backend: Backend, pod: str) -> dict[str, str]:
    log = backend.kubectl("logs", "-n", backend.namespace, pod, "-c", "server")
    line = next(row for row in log.splitlines() if row.startswith("pinserve:"))
    return dict(kv.split("=", 1) for kv in line.removeprefix("pinserve:").split() if "=" in kv)


def free_the_pinnable_cpu(backend: Backend) -> None:
    """The real node has one CPU to pin: the demo gives it up (test_serving.py deletes it last; run alone,
    this test does it). The kubelet frees a deleted pod's CPUs within its reconcile period."""
    backend.kubectl("delete", "-n", backend.namespace, "modelserver/demo", "--ignore-not-found", "--wait=true")
    if backend.name != "realnode":
        return
    state_file = backend.stack.node.layout.cpu_manager_state  # type: ignore[attr-defined]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and json.loads(state_file.read_text()).get("entries"):
        time.sleep(1)
