"""The server container's start script: counts the physical cores it really got, then execs TF Serving.

The counting happens in the pod, not in the operator, because only the pod knows which CPUs the
kubelet's static CPU manager handed it (see templates/start.sh.j2 for the environment contract and
the log-line format).
"""

from __future__ import annotations

from functools import cache

from pinserve.render.text import render_text

TEMPLATE = "start.sh.j2"


def render_start_script(*, default_inter_op: int = 2, default_kmp_blocktime: int = 1) -> str:
    """Render the POSIX sh start script with the given baked-in thread defaults.

    Both values land unquoted in shell arithmetic, so only plain non-negative ints are accepted.
    """
    # bool is an int subclass; True would render as "True" and break the script.
    if isinstance(default_inter_op, bool) or not isinstance(default_inter_op, int) or default_inter_op < 1:
        raise ValueError(f"default_inter_op must be an int >= 1, got {default_inter_op!r}")
    if (
        isinstance(default_kmp_blocktime, bool)
        or not isinstance(default_kmp_blocktime, int)
        or default_kmp_blocktime < 0
    ):
        raise ValueError(f"default_kmp_blocktime must be an int >= 0, got {default_kmp_blocktime!r}")
    return _render(default_inter_op, default_kmp_blocktime)


@cache  # rendered on every reconcile (ConfigMap and the Deployment's config hash); the inputs are two ints
def _render(default_inter_op: int, default_kmp_blocktime: int) -> str:
    return render_text(TEMPLATE, default_inter_op=default_inter_op, default_kmp_blocktime=default_kmp_blocktime)
