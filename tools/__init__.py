"""Developer tools: the local control plane (tools.cluster), simulated nodes (tools.fakenodes), demos and
benchmarks. Run them from the repository root as modules, e.g. ``python -m tools.cluster up``."""
