"""Time planning + rendering of the example ModelServers, in-process and as `pinserve render` runs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import yaml

from pinserve.offline import render_documents

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    examples = sorted((REPO / "manifests/examples").glob("*.yaml"))
    docs = [d for path in examples for d in yaml.safe_load_all(path.read_text()) if d]
    render_documents(docs, None)  # warm caches (templates)
    rounds = 200
    start = time.perf_counter()
    for _ in range(rounds):
        render_documents(docs, None)
    per_ms = (time.perf_counter() - start) / (rounds * len(docs)) * 1e6
    print(f"  in-process: {per_ms:.0f} µs per ModelServer (plan + render of {len(docs)} examples x {rounds})")
    cli = [sys.executable, "-m", "pinserve", "render", "-f", str(examples[0])]
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run(cli, check=True, capture_output=True)
        runs.append(time.perf_counter() - t)
    print(f"  `pinserve render -f {examples[0].name}`: best {min(runs) * 1000:.0f} ms, "
          f"median {sorted(runs)[2] * 1000:.0f} ms wall (process start + imports included)")


if __name__ == "__main__":
    main()
