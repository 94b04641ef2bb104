"""`pinserve run | topology | render | bench | agent | fetch-model | tune | tune-trial | tune-report`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pinserve import __version__

#: The exit status when the reader of stdout goes away (``pinserve render ... | head -1``): 128 + SIGPIPE, what
#: a shell reports for a unix tool that SIGPIPE killed, so ``set -o pipefail`` treats pinserve like ``cat``.
EXIT_BROKEN_PIPE = 141
_EPILOG = ("exit status: 0 success, 1 failure, 2 invalid input or usage, 141 (128 + SIGPIPE) when the reader "
           "of the output goes away early, as in `pinserve render -f ms.yaml | head -1`; nothing is printed then")


def _cmd_run(args: argparse.Namespace) -> int:
    import kopf  # noqa: PLC0415  (the other commands must not pay for kopf's import)

    import pinserve.handlers  # noqa: F401, PLC0415  (registers the handlers)
    from pinserve.peering import default_priority  # noqa: PLC0415
    from pinserve.settings import Settings  # noqa: PLC0415

    settings = Settings.from_env()
    kopf.configure(verbose=args.verbose)
    if not args.verbose:
        # kopf logs every handled watch event at INFO; keep the operator's own lines and warnings.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        # lightkube's HTTP client logs every request at INFO: thousands of lines a minute on a busy cluster.
        logging.getLogger("httpx2").setLevel(logging.WARNING)
    peering: dict[str, Any] = {"standalone": True}
    if settings.peering:
        # kopf names this replica by POD_ID (the chart sets the pod's name); pinserve.peering reads the same.
        os.environ.setdefault("POD_ID", f"{socket.gethostname()}/{os.getpid()}")
        priority = default_priority() if settings.peering_priority is None else settings.peering_priority
        peering = {"peering_name": settings.peering, "priority": priority, "identity": os.environ["POD_ID"]}
    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=args.liveness,
        **peering,
    )
    return 0


def _cmd_topology(args: argparse.Namespace) -> int:
    from pinserve.topology_report import machine_report, render_text  # noqa: PLC0415

    try:
        report = machine_report(args.sysfs_root)
    except (ValueError, OSError) as exc:  # TopologyError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _emit((json.dumps(report, indent=2) if args.json else render_text(report)) + "\n")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from pinserve.api import InvalidSpecError  # noqa: PLC0415
    from pinserve.offline import render_documents, topology_from_json  # noqa: PLC0415
    from pinserve.planning import PlanError  # noqa: PLC0415

    if args.filename == "-" and args.topology == "-":
        print("error: -f - and --topology - cannot both read stdin", file=sys.stderr)
        return 2
    try:
        topology = topology_from_json(sys.stdin.read(), "stdin") if args.topology == "-" else args.topology
        text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
        docs = [d for d in yaml.safe_load_all(text) if d]
        objects, notes = render_documents(docs, topology)
    except (InvalidSpecError, PlanError, ValueError, yaml.YAMLError, OSError) as exc:
        field = getattr(exc, "field", None)
        print(f"error: {exc}" if field is None or str(exc).startswith(field) else f"error: {field}: {exc}",
              file=sys.stderr)
        return 2
    for note in notes:
        print(f"# {note}", file=sys.stderr)
    _emit(yaml.dump_all(objects, Dumper=_PlainDumper, sort_keys=False))
    return 0


def _emit(text: str) -> None:
    """Write ``text`` to stdout in full, or raise BrokenPipeError when its reader goes away.

    One large ``sys.stdout.write`` can lose its tail without an error: when the pipe closes mid-write,
    CPython's BufferedWriter returns the partial count and TextIOWrapper drops it. Writing the bytes until
    all are taken makes the closed pipe show (see :func:`main`).
    """
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a text-only stream (io.StringIO in a test): nothing to lose
        sys.stdout.write(text)
        return
    sys.stdout.flush()
    data = memoryview(text.encode(sys.stdout.encoding or "utf-8", sys.stdout.errors or "strict"))
    while data:
        written = buffer.write(data)
        data = data[written if written is not None else len(data):]
    buffer.flush()


class _PlainDumper(yaml.SafeDumper):
    """No &anchors/*aliases: rendered manifests are read by people and by kubectl."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pinserve", description=__doc__, epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=f"pinserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator (kopf), cluster-wide or in PINSERVE_NAMESPACES")
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf's liveness endpoint")
    run.add_argument("--verbose", action="store_true", help="log every handled event")

    topo = sub.add_parser("topology", help="this machine's CPU topology and the thread settings pinserve uses")
    topo.add_argument("--sysfs-root", default="/", help="a filesystem root holding sys/ (or a sysfs root)")
    topo.add_argument("--json", action="store_true", help="machine-readable output; its cpuTopology is the node "
                      "annotation pinserve.io/cpu-topology, and `pinserve render --topology` reads the whole report")

    render = sub.add_parser("render", help="print the objects a ModelServer would create, without a cluster")
    render.add_argument("-f", "--filename", required=True, help="ModelServer YAML ('-' for stdin)")
    render.add_argument("--topology", help="node topology: a sysfs root, or a JSON file ('-' for stdin) holding "
                        "the pinserve.io/cpu-topology annotation, a Node carrying it, or `pinserve topology --json` "
                        "output; default: one node of unknown topology with room for anything")

    sub.add_parser("bench", help="benchmark a TensorFlow Serving endpoint (see `pinserve bench --help`)",
                   add_help=False)
    sub.add_parser("fetch-model", help="download and unpack a SavedModel, or convert a frozen graph or Keras .h5 "
                   "to one (the model init container)",
                   add_help=False)
    sub.add_parser("agent", help="the node agent: publish CPU topology and pod cpusets (DaemonSet)",
                   add_help=False)
    sub.add_parser("tune", help="find the fastest thread and batching settings on bare metal: start a server "
                   "binary per candidate on the given CPUs and benchmark it (see `pinserve tune --help`)",
                   add_help=False)
    sub.add_parser("tune-trial", help="the measuring container of an in-cluster tuning trial pod (the operator "
                   "runs it; see `pinserve tune-trial --help`)", add_help=False)
    sub.add_parser("tune-report", help="print tuning trials (`pinserve tune` JSON or a ModelServer's "
                   "status.tuning) as a table, best first", add_help=False)
    return parser


def _delegate(command: str, rest: list[str]) -> int:
    """Sub-commands with their own argument parsers (and heavier imports)."""
    if command == "bench":
        from pinserve.bench.cli import main as delegate  # noqa: PLC0415
    elif command == "fetch-model":
        from pinserve.fetch import main as delegate  # noqa: PLC0415
    elif command == "tune":
        from pinserve.tune.cli import main as delegate  # noqa: PLC0415
    elif command == "tune-trial":
        from pinserve.tune.trial import main as delegate  # noqa: PLC0415
    elif command == "tune-report":
        from pinserve.tuning_report import main as delegate  # noqa: PLC0415
    else:
        from pinserve.agent.cli import main as delegate  # noqa: PLC0415
    return delegate(rest)


_DELEGATED = ("bench", "fetch-model", "agent", "tune", "tune-trial", "tune-report")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; when stdout's reader goes away, exit quietly with :data:`EXIT_BROKEN_PIPE`.

    This is the recipe of Python's ``signal`` documentation: output that fits in stdout's buffer only fails
    at the last flush, so that flush happens here (also after ``--help``'s SystemExit), and stdout is then
    pointed at /dev/null so the interpreter's own flush at exit cannot fail again.
    """
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        if not _stdout_closed():  # a socket or a child's pipe: a real error, not the reader leaving
            raise
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _stdout_closed() -> bool:
    """Whether nobody reads stdout any more (the write end of a pipe without readers polls as an error)."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, ValueError, OSError):  # no real file behind stdout
        return False


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:
        return _delegate(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    handlers: dict[str, Any] = {
        "run": _cmd_run,
        "topology": _cmd_topology,
        "render": _cmd_render,
    }
    result: int = handlers[args.command](args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
