"""The benchmark's /proc readings: CPU time, recorded pids, and waiting for a quiet control plane."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tools.procstats import cpu_seconds, recorded_pids, rss_mb, wait_quiet

pytestmark = pytest.mark.unit


def test_reads_this_process_and_a_gone_one() -> None:
    assert rss_mb(os.getpid()) > 1
    assert cpu_seconds(os.getpid()) > 0
    assert cpu_seconds(2**22 + 7) == 0.0  # above pid_max's default: no such process


def test_recorded_pids(tmp_path: Path) -> None:
    assert recorded_pids(tmp_path) == []
    (tmp_path / "pids").write_text("etcd 101\nkube-apiserver 102\nbroken\n")
    assert recorded_pids(tmp_path) == [101, 102]


def test_waits_while_busy_and_returns_once_quiet() -> None:
    windows: list[float] = []

    def busy_then_idle(seconds: float) -> None:
        windows.append(seconds)
        if len(windows) <= 2:  # two busy windows: this process spins through them
            end = time.process_time() + seconds
            while time.process_time() < end:
                pass

    waited, cores = wait_quiet([os.getpid()], below=0.5, window=0.05, sleep=busy_then_idle)
    assert len(windows) == 3 and waited == pytest.approx(0.15) and cores < 0.5
    waited, cores = wait_quiet([os.getpid()], below=-1, window=0.01, limit=0.03, sleep=lambda _: None)
    assert waited == pytest.approx(0.03) and cores >= 0  # never quiet enough: the limit ends it
