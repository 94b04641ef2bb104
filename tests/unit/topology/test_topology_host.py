"""read_topology on the machine running the tests: a live /sys, whatever its kernel."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pinserve.topology import allowed_cpus_of_self, parse_cpulist, read_topology

pytestmark = pytest.mark.unit


def test_host_topology_counts_the_online_cpus() -> None:
    topo = read_topology("/")
    online = parse_cpulist(Path("/sys/devices/system/cpu/online").read_text())
    assert topo.cpus == online
    # os.cpu_count() counts online CPUs on Linux (_SC_NPROCESSORS_ONLN), not the cgroup's share.
    assert topo.logical_cpus == os.cpu_count()
    assert topo.physical_cores >= 1
    assert topo.sockets >= 1
    assert topo.threads_per_core >= 1
    assert topo.numa_count >= 1
    assert sum(topo.cores_per_numa().values()) == topo.physical_cores


def test_sysfs_root_and_filesystem_root_agree() -> None:
    assert read_topology("/sys") == read_topology("/")


def test_own_affinity_is_within_the_topology() -> None:
    allowed = allowed_cpus_of_self()
    topo = read_topology("/", restrict_to=allowed)
    assert allowed
    assert topo.cpus == allowed
    assert topo.physical_cores == read_topology("/").physical_cores_of(allowed)
