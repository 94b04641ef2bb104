"""What the benchmarks read of processes: RSS and CPU time from `/proc`, a control plane gone quiet, and the
event-loop lag and GC pauses an operator wrote to its stats file."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used (``/proc/PID/stat`` fields 14 and 15); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def recorded_pids(state_dir: Path) -> list[int]:
    """The processes a local cluster recorded in its state directory (``pids``: "name pid" per line)."""
    try:
        lines = (state_dir / "pids").read_text().splitlines()
    except OSError:
        return []
    return [int(parts[1]) for parts in (line.split() for line in lines) if len(parts) == 2 and parts[1].isdigit()]


def wait_quiet(pids: Iterable[int], *, below: float = 0.25, window: float = 5.0, limit: float = 240.0,
               sleep: Callable[[float], None] = time.sleep) -> tuple[float, float]:
    """Wait until ``pids`` together use less than ``below`` of a core over ``window`` seconds (at most ``limit``
    seconds): a control plane still settling its nodes is not the quiet cluster a column should start on.
    Returns (seconds waited, the last window's cores)."""
    pids = list(pids)
    waited, cores = 0.0, float("inf")
    while waited < limit:
        before = sum(cpu_seconds(p) for p in pids)
        sleep(window)
        waited += window
        cores = (sum(cpu_seconds(p) for p in pids) - before) / window
        if cores < below:
            break
    return waited, cores


def loop_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """The event-loop lag and GC pauses (pinserve.loopwatch summaries) between two stats files."""
    if not after:
        return {}
    gc0, gc1 = before.get("gc") or {}, after["gc"]

    def gc(gen: str, key: str) -> float:
        return float(gc1.get(gen, {}).get(key, 0)) - float(gc0.get(gen, {}).get(key, 0))

    over = {f"over {b}": n - (before.get("lag_over") or {}).get(b, 0) for b, n in after["lag_over"].items()}
    return {"lag_seconds": after["lag_seconds"] - before.get("lag_seconds", 0.0), **over,
            "gc2": gc("2", "collections"), "gc2 s": gc("2", "seconds"),
            "gc01 s": gc("0", "seconds") + gc("1", "seconds")}
