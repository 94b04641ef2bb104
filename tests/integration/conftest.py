"""The integration tier's control plane as a session fixture.

``cluster`` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and KWOK through
tools/cluster.py (simulated nodes from tools/fakenodes.py) and stops them at the end of the session.

Environment:
  PINSERVE_KUBECONFIG          use that cluster instead of starting one (never stopped, no nodes added)
  PINSERVE_CLUSTER_STATE_DIR   state directory of the started cluster; a healthy cluster running there is
                               reused (default: ~/.cache/pinserve/cluster-pytest-<pid>, one per session,
                               removed after a green session, its logs kept after a red one)
  PINSERVE_KEEP_CLUSTER=1      leave the cluster running after the session, in ~/.cache/pinserve/cluster-pytest
                               unless PINSERVE_CLUSTER_STATE_DIR says otherwise (fast re-runs reuse it)
  PINSERVE_BUILD_TESTBIN=1     build missing binaries with tools/testbin.sh before the session (always in CI)
  CI=true                      a control plane that cannot start fails the tests instead of skipping them
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools import cluster as cluster_tools

_build_error: str | None = None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build missing binaries before any test runs (outside the per-test timeout), in CI or when asked."""
    global _build_error  # noqa: PLW0603
    if os.environ.get("PINSERVE_KUBECONFIG") or cluster_tools.cached_bin_dir() is not None:
        return
    if not (in_ci() or _truthy("PINSERVE_BUILD_TESTBIN")):
        return
    if not any(item.get_closest_marker("integration") for item in session.items):
        return
    try:
        os.environ["PINSERVE_BIN_DIR"] = str(cluster_tools.build_binaries())
    except cluster_tools.ClusterError as exc:
        _build_error = str(exc)


SESSION_PREFIX = "cluster-pytest-"


def _reap_orphaned_sessions() -> None:
    """Stop the control planes of earlier sessions that died without tearing down (killed pytest)."""
    for state_dir in cluster_tools.cache_root().glob(f"{SESSION_PREFIX}*"):
        pid = state_dir.name.removeprefix(SESSION_PREFIX)
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        try:
            cluster_tools.LocalCluster(state_dir).down()
        except (cluster_tools.ClusterError, OSError) as exc:
            cluster_tools.log(f"could not clean up {state_dir}: {exc}")
            continue
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[cluster_tools.IntegrationCluster]:
    external = os.environ.get("PINSERVE_KUBECONFIG")
    if external:
        bin_dir = cluster_tools.cached_bin_dir()
        if bin_dir is None:
            found = shutil.which("kubectl")
            bin_dir = Path(found).parent if found else None
        if bin_dir is None:
            pytest.fail("PINSERVE_KUBECONFIG is set but no kubectl was found (run tools/testbin.sh)", pytrace=False)
        handle = cluster_tools.IntegrationCluster(Path(external), bin_dir)
        probe = handle.kubectl("get", "--raw", "/readyz", check=False, timeout=20)
        if probe.returncode != 0:
            pytest.fail(
                f"the cluster of PINSERVE_KUBECONFIG={external} is not ready: {probe.stderr.strip()}",
                pytrace=False,
            )
        yield handle
        return

    bin_dir = cluster_tools.cached_bin_dir()
    if bin_dir is None:
        where = os.environ.get("PINSERVE_BIN_DIR") or cluster_tools.expected_bin_dir()
        reason = f"control plane binaries are not built (expected in {where}); run tools/testbin.sh"
        if _build_error:
            reason += f"; building them failed: {_build_error}"
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)

    keep = _truthy("PINSERVE_KEEP_CLUSTER")
    state_env = os.environ.get("PINSERVE_CLUSTER_STATE_DIR")
    if state_env:
        state_dir, ephemeral = Path(state_env), False
    elif keep:
        state_dir, ephemeral = cluster_tools.cache_root() / "cluster-pytest", False
    else:
        # One directory per session, so that concurrent sessions never share (or stop) a control plane.
        _reap_orphaned_sessions()
        state_dir, ephemeral = cluster_tools.cache_root() / f"{SESSION_PREFIX}{os.getpid()}", True
    local = cluster_tools.LocalCluster(state_dir, bin_dir)
    try:
        local.up(build=False)
    except (cluster_tools.ClusterError, OSError) as exc:
        pytest.fail(f"the local control plane did not start: {exc}", pytrace=False)
    try:
        yield cluster_tools.IntegrationCluster(local.kubeconfig, bin_dir, local)
    finally:
        if keep:
            cluster_tools.log(f"PINSERVE_KEEP_CLUSTER set: leaving the cluster in {local.state_dir} running")
        else:
            local.down()
            if ephemeral and request.session.testsfailed == 0:
                shutil.rmtree(local.state_dir, ignore_errors=True)
            else:
                cluster_tools.log(f"control plane logs kept in {local.logs_dir}")


@pytest.fixture
def namespace(cluster: cluster_tools.IntegrationCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted (without waiting) afterwards.

    Labelled ``pod-security.kubernetes.io/enforce=restricted``, so the API server's PodSecurity admission
    refuses any pod pinserve makes that is not "restricted". A module whose own test pods are not (the
    control plane's smoke tests, the agent's hand-made pods) sets ``POD_SECURITY = "privileged"``.
    """
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"t-{base}-{uuid.uuid4().hex[:6]}"
    level = getattr(request.module, "POD_SECURITY", "restricted")
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, f"pod-security.kubernetes.io/enforce={level}",
                    "pod-security.kubernetes.io/enforce-version=latest")
    cluster.wait_for(
        f"the default ServiceAccount in {name}",
        lambda: True if cluster.exists("serviceaccount", "default", "-n", name) else None,
        timeout=30,
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
