"""`pinserve topology`: the machine's CPU layout and the thread settings pinserve would use."""

from __future__ import annotations

from typing import Any

from pinserve.planning import (
    DEFAULT_INTER_OP,
    DEFAULT_KMP_BLOCKTIME,
    KMP_AFFINITY_NO_SMT,
    KMP_AFFINITY_SMT,
)
from pinserve.topology.sysfs import read_topology


def machine_report(root: str) -> dict[str, Any]:
    """The report ``pinserve topology --json`` prints.

    Its ``cpuTopology`` is the versioned document the agent publishes as the node annotation
    ``pinserve.io/cpu-topology``, so ``pinserve render --topology`` reads the report as it is.
    """
    topo = read_topology(root)
    report = topo.report()
    cores = topo.physical_cores
    report["recommended"] = {
        "physicalCores": cores,
        "cpuRequest": topo.logical_cpus,
        "OMP_NUM_THREADS": cores,
        "TENSORFLOW_INTRA_OP_PARALLELISM": cores,
        "TENSORFLOW_INTER_OP_PARALLELISM": min(DEFAULT_INTER_OP, topo.logical_cpus),
        "KMP_AFFINITY": KMP_AFFINITY_SMT if topo.smt else KMP_AFFINITY_NO_SMT,
        "KMP_BLOCKTIME": DEFAULT_KMP_BLOCKTIME,
        # One replica per NUMA node keeps memory local (the 3D U-Net guide's numactl advice).
        "perNumaNode": {str(node): n for node, n in sorted(topo.cores_per_numa().items())},
    }
    report["cpuTopology"] = topo.to_dict()
    return report


def render_text(report: dict[str, Any]) -> str:
    rec = report["recommended"]
    lines = [
        f"model:            {report.get('modelName') or 'unknown'}",
        f"sockets:          {report['sockets']}",
        f"NUMA nodes:       {report['numaNodes']}",
        f"physical cores:   {report['physicalCores']}",
        f"logical CPUs:     {report['logicalCpus']} ({report['threadsPerCore']} thread(s) per core, "
        f"SMT {'on' if report['smt'] else 'off'})",
        f"ISA flags:        {' '.join(report.get('isaFlags') or []) or 'none of interest'}",
    ]
    for core in report["cores"][:64]:
        lines.append(f"  socket {core['socket']} numa {core['numa']} core {core['coreId']}: cpus "
                     f"{','.join(str(c) for c in core['cpus'])}")
    if len(report["cores"]) > 64:
        lines.append(f"  ... {len(report['cores']) - 64} more cores (use --json)")
    lines.append("pinserve would use, for a replica on the whole machine:")
    for key in ("OMP_NUM_THREADS", "TENSORFLOW_INTRA_OP_PARALLELISM", "TENSORFLOW_INTER_OP_PARALLELISM",
                "KMP_AFFINITY", "KMP_BLOCKTIME"):
        lines.append(f"  {key}={rec[key]}")
    per_numa = ", ".join(f"node {k}: {v}" for k, v in rec["perNumaNode"].items())
    lines.append(f"  physical cores per NUMA node ({per_numa}); with placement.numa=Require a replica "
                 "fits in one node")
    return "\n".join(lines)
