"""The control plane's binaries: the versions pinned in tools/versions.env, built by tools/testbin.sh."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from tools.kubeutil import ClusterError, log

TOOLS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TOOLS_DIR.parent

#: Start order; ``down`` stops in reverse.
COMPONENTS: tuple[str, ...] = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
CLUSTER_BINARIES: tuple[str, ...] = (*COMPONENTS, "kubectl")


def cache_root() -> Path:
    return Path(os.environ.get("PINSERVE_CACHE", Path.home() / ".cache" / "pinserve"))


def read_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for raw in (TOOLS_DIR / "versions.env").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip().strip("'\"")
    return versions


def expected_bin_dir() -> Path:
    """Where tools/testbin.sh links the binaries of the versions pinned in tools/versions.env."""
    v = read_versions()
    name = f"current-{v['KUBERNETES_VERSION']}-{v['ETCD_VERSION']}-{v['KWOK_VERSION']}-{v['HELM_VERSION']}"
    return cache_root() / "bin" / name


def missing_binaries(bin_dir: Path, names: Iterable[str] = CLUSTER_BINARIES) -> list[str]:
    return [n for n in names if not os.access(bin_dir / n, os.X_OK)]


def cached_bin_dir() -> Path | None:
    """The binaries' directory if every cluster binary is there (``$PINSERVE_BIN_DIR`` wins), else None."""
    env = os.environ.get("PINSERVE_BIN_DIR")
    candidate = Path(env) if env else expected_bin_dir()
    return candidate if not missing_binaries(candidate) else None


def build_binaries() -> Path:
    """Run tools/testbin.sh (builds on first use, cached afterwards); returns the bin directory."""
    log("running tools/testbin.sh (reuses its cache; a cold build takes tens of minutes)")
    started = time.monotonic()
    proc = subprocess.run(["bash", str(TOOLS_DIR / "testbin.sh")], stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"tools/testbin.sh failed with exit code {proc.returncode} (see its output above)")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise ClusterError("tools/testbin.sh printed no bin directory")
    bin_dir = Path(lines[-1])
    log(f"binaries ready in {time.monotonic() - started:.1f}s: {bin_dir}")
    return bin_dir


def resolve_bin_dir(bin_dir: Path | None = None, *, build: bool = True) -> Path:
    if bin_dir is None:
        bin_dir = cached_bin_dir()
    if bin_dir is None:
        if not build:
            raise ClusterError(
                f"control plane binaries not found in {expected_bin_dir()}; build them with tools/testbin.sh"
            )
        bin_dir = build_binaries()
    missing = missing_binaries(bin_dir)
    if missing:
        raise ClusterError(f"{bin_dir} lacks {', '.join(missing)}; rebuild with tools/testbin.sh")
    return bin_dir

