"""`pinserve fetch-model`: put a SavedModel from a URI at /models/<name>/<version>.

The init container of every URI-sourced ModelServer runs this. It downloads the archive (http,
https, gs://, s3://; credentials from the environment), unpacks it safely, picks the directory
holding saved_model.pb (``--path``, or the only one) and renames it into ``--dest`` atomically.
A restart with the same URI and path reuses a complete ``--dest``. Failures end with one line on
stderr and in the termination log, and a distinct exit code (``EXIT_REASONS``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pinserve.fetch.archive import (
    archive_kind,
    clean_path,
    is_saved_model_dir,
    make_readable,
    materialize_external_links,
    reject_single_file,
    select_saved_model,
    unpack,
)
from pinserve.fetch.download import download
from pinserve.fetch.errors import (
    EXIT_REASONS,
    AmbiguousSavedModelError,
    CorruptArchiveError,
    DownloadFailedError,
    FetchError,
    FetchTimeoutError,
    ForbiddenError,
    InvalidArgumentError,
    LocalIOError,
    NoSavedModelError,
    NotAnArchiveError,
    NotFoundError,
    PathNotFoundError,
    UnsafeArchiveError,
)
from pinserve.fetch.sources import Source, resolve

__all__ = [
    "EXIT_REASONS",
    "AmbiguousSavedModelError",
    "CorruptArchiveError",
    "DownloadFailedError",
    "FetchError",
    "FetchResult",
    "FetchTimeoutError",
    "ForbiddenError",
    "InvalidArgumentError",
    "LocalIOError",
    "NoSavedModelError",
    "NotAnArchiveError",
    "NotFoundError",
    "PathNotFoundError",
    "Source",
    "UnsafeArchiveError",
    "fetch_model",
    "main",
    "resolve",
    "write_termination_log",
]

TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LOG_VAR = "PINSERVE_TERMINATION_LOG"
TERMINATION_LIMIT = 4000  # the kubelet keeps 4096 bytes per container


@dataclass(frozen=True)
class FetchResult:
    dest: Path
    url: str
    selected: str  # the SavedModel's directory inside the archive ('.' = its root)
    reused: bool  # True: a complete dest from an earlier run, nothing downloaded
    size: int  # archive bytes downloaded (0 when reused)
    sha256: str  # of the archive (recorded from the run that downloaded it)
    files: int  # files in dest


def _stderr(message: str) -> None:
    print(f"fetch-model: {message}", file=sys.stderr, flush=True)


def _marker(dest: Path) -> Path:
    # Beside dest, not in it: the SavedModel directory stays exactly what the archive held, and TF
    # Serving ignores base-path entries that are not version numbers.
    return dest.parent / f".{dest.name}.pinserve-fetch.json"


def _count_files(tree: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(tree))


def _reusable(dest: Path, uri: str, path: str) -> dict[str, object] | None:
    try:
        record = json.loads(_marker(dest).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("uri") != uri or record.get("path") != path:
        return None
    return record if is_saved_model_dir(dest) else None


def _clean_stale(parent: Path, name: str, log: Callable[[str], None]) -> None:
    """Leftovers of an interrupted run (the init container was killed mid-download)."""
    for stale in parent.glob(f".{name}.fetch-*"):
        log(f"removing leftovers of an interrupted run: {stale}")
        shutil.rmtree(stale, ignore_errors=True)


def _install(model_dir: Path, dest: Path, work: Path) -> None:
    """Rename into place; both live in dest's parent, so each rename is atomic."""
    _marker(dest).unlink(missing_ok=True)
    if dest.exists() or dest.is_symlink():
        os.rename(dest, work / "previous")
    os.rename(model_dir, dest)


def fetch_model(
    uri: str,
    path: str,
    dest: str | os.PathLike[str],
    *,
    env: Mapping[str, str] = os.environ,
    timeout: float = 60.0,
    retries: int = 5,
    backoff: float = 1.0,
    log: Callable[[str], None] | None = None,
) -> FetchResult:
    """Put the SavedModel that ``path`` names inside the archive at ``uri`` exactly at ``dest``.

    ``timeout`` bounds each connect and each read (seconds), ``retries`` the extra attempts after
    a connection error, timeout or 5xx (backoff doubling from ``backoff`` seconds, capped at 30).
    Raises a ``FetchError`` subclass with a one-line message.
    """
    say = log or _stderr
    target = Path(dest)
    if target.name in ("", ".", ".."):
        raise InvalidArgumentError(f"dest {str(dest)!r} must name the version directory, e.g. /models/rfcn/1")
    if timeout <= 0 or retries < 0 or backoff < 0:
        raise InvalidArgumentError("timeout must be positive, retries and backoff not negative")
    rel = clean_path(path)
    reject_single_file(uri)
    source = resolve(uri, env)

    record = _reusable(target, uri, rel)
    if record is not None:
        say(f"{target} already holds the SavedModel from {uri}; nothing to do")
        return FetchResult(target, source.url, str(record.get("selected", rel or ".")), True, 0,
                           str(record.get("sha256", "")), _count_files(target))

    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _clean_stale(parent, target.name, say)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.fetch-", dir=parent))
    except OSError as err:
        raise LocalIOError(f"cannot prepare {parent}: {err.strerror or err}") from None
    try:
        archive = work / "download"
        say(f"fetching {uri} from {source.url} ({source.auth})")
        got = download(source, archive, timeout=timeout, retries=retries, backoff=backoff, log=say)
        say(f"downloaded {got.size} bytes, sha256 {got.sha256}")
        kind = archive_kind(uri, archive)
        tree = work / "tree"
        tree.mkdir()
        unpacked = unpack(kind, archive, tree, uri)
        archive.unlink()  # free the space before the tree moves
        model_dir, selected = select_saved_model(tree, rel, uri)
        try:
            materialize_external_links(model_dir)
            make_readable(model_dir)
            _install(model_dir, target, work)
            _marker(target).write_text(json.dumps(
                {"uri": uri, "path": rel, "selected": selected or ".", "sha256": got.sha256, "size": got.size}))
        except OSError as err:
            raise LocalIOError(f"cannot install the SavedModel at {target}: {err.strerror or err}") from None
        files = _count_files(target)
        say(f"unpacked {unpacked} files; SavedModel {selected or '.'} ({files} files) is now {target}")
        return FetchResult(target, source.url, selected or ".", False, got.size, got.sha256, files)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_termination_log(line: str, env: Mapping[str, str] = os.environ) -> bool:
    """Write ``line`` where the kubelet picks up the termination message. The default path is
    written only if it exists and is writable (i.e. inside a container); an explicit
    PINSERVE_TERMINATION_LOG may be created."""
    override = env.get(TERMINATION_LOG_VAR, "").strip()
    path = Path(override or TERMINATION_LOG)
    if path.exists():
        if not os.access(path, os.W_OK) or path.is_dir():
            return False
    elif not override or not os.access(path.parent, os.W_OK):
        return False
    data = " ".join(line.split()).encode("utf-8")[:TERMINATION_LIMIT].decode("utf-8", "ignore")
    try:
        path.write_text(data + "\n", encoding="utf-8")
    except OSError:
        return False
    return True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pinserve fetch-model",
        description="Download a SavedModel archive and put its SavedModel directory at --dest.",
        epilog="exit codes: " + ", ".join(f"{code} {reason}" for code, reason in sorted(EXIT_REASONS.items())),
    )
    parser.add_argument("--uri", required=True, help="http(s)://, gs://bucket/key or s3://bucket/key of a "
                        ".tar.gz/.tgz/.tar/.zip archive")
    parser.add_argument("--path", default="", help="directory inside the archive holding saved_model.pb "
                        "(default: the only one)")
    parser.add_argument("--dest", required=True, help="version directory to create, e.g. /models/rfcn/1")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per connect/read (default 60)")
    parser.add_argument("--retries", type=int, default=5,
                        help="extra attempts after connection errors, timeouts and 5xx (default 5)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help or a usage error: argparse has printed why
        return exc.code if isinstance(exc.code, int) else 2
    try:
        result = fetch_model(args.uri, args.path, args.dest, timeout=args.timeout, retries=args.retries)
    except FetchError as err:
        print(f"pinserve fetch-model: {err.line()}", file=sys.stderr, flush=True)
        write_termination_log(err.line())
        return err.exit_code
    except Exception as err:  # a bug: keep the trace in the log, the gist in the message
        traceback.print_exc()
        line = f"FetchFailed: unexpected {type(err).__name__}: {err}"
        write_termination_log(line)
        return FetchError.exit_code
    what = "reused" if result.reused else f"fetched {result.size} bytes (sha256 {result.sha256}) into"
    print(f"{what} {result.dest}: SavedModel {result.selected} from {args.uri}, {result.files} files")
    return 0
