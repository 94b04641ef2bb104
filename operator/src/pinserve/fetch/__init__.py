"""`pinserve fetch-model`: put a SavedModel from a URI at /models/<name>/<version>.

The init container of every URI-sourced ModelServer runs this. It downloads the archive (http,
https, gs://, s3://; credentials from the environment), unpacks it safely, picks the directory
holding saved_model.pb (``--path``, or the only one) and renames it into ``--dest`` atomically.
With ``--format frozenGraph`` or ``keras`` it picks the model file instead (``--path`` names it or
its directory; the URI may also be the file itself) and converts it to a SavedModel (convert.py).
A restart with the same URI and path reuses a complete ``--dest``. Failures end with one line on
stderr and in the termination log, and a distinct exit code (``EXIT_REASONS``).

Hard limits (limits.py): the archive's size (``--max-download-bytes``), the unpacked tree's
(``--max-unpacked-bytes``), the whole fetch's time (``--deadline-seconds``, with a watchdog that ends the
process shortly after it) and the time without a byte (``--timeout``, the stall timeout). Nothing printed
carries a URI's query string or userinfo (redact.py): a presigned URL may come from the environment
(``PINSERVE_MODEL_URI``, e.g. from the credentials Secret) while ``--uri`` holds it redacted.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

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
from pinserve.fetch.convert import (
    FORMATS,
    SAVED_MODEL,
    check_options,
    clean_file_path,
    convert,
    parse_pairs,
    select_model_file,
    uri_names_model_file,
)
from pinserve.fetch.download import download
from pinserve.fetch.errors import (
    EXIT_REASONS,
    AmbiguousModelFileError,
    AmbiguousSavedModelError,
    CorruptArchiveError,
    DownloadFailedError,
    FetchError,
    FetchTimeoutError,
    ForbiddenError,
    InvalidArgumentError,
    LocalIOError,
    ModelConvertError,
    NoModelFileError,
    NoSavedModelError,
    NotAnArchiveError,
    NotFoundError,
    PathNotFoundError,
    TooLargeError,
    UnsafeArchiveError,
)
from pinserve.fetch.limits import (
    DEFAULT_DEADLINE,
    DEFAULT_MAX_DOWNLOAD,
    DEFAULT_MAX_UNPACKED,
    DEFAULT_STALL,
    Budget,
    Clock,
    Limits,
    human,
    parse_size,
)
from pinserve.fetch.sources import Source, resolve
from pinserve.redact import has_secret_part, redact_text, redact_uri

__all__ = [
    "EXIT_REASONS",
    "FORMATS",
    "AmbiguousModelFileError",
    "AmbiguousSavedModelError",
    "CorruptArchiveError",
    "DownloadFailedError",
    "FetchError",
    "FetchResult",
    "FetchTimeoutError",
    "ForbiddenError",
    "InvalidArgumentError",
    "Limits",
    "LocalIOError",
    "ModelConvertError",
    "NoModelFileError",
    "NoSavedModelError",
    "NotAnArchiveError",
    "NotFoundError",
    "PathNotFoundError",
    "Source",
    "TooLargeError",
    "UnsafeArchiveError",
    "fetch_model",
    "main",
    "resolve",
    "write_termination_log",
]

TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LOG_VAR = "PINSERVE_TERMINATION_LOG"
TERMINATION_LIMIT = 4000  # the kubelet keeps 4096 bytes per container
URI_VAR = "PINSERVE_MODEL_URI"  # the full URI (say, presigned), when --uri carries it redacted
WATCHDOG_GRACE = 30.0  # seconds past --deadline-seconds before the watchdog ends the process


@dataclass(frozen=True)
class FetchResult:
    dest: Path
    url: str
    selected: str  # the SavedModel's directory (or the converted model file) inside the archive ('.' = its root)
    reused: bool  # True: a complete dest from an earlier run, nothing downloaded
    size: int  # archive bytes downloaded (0 when reused)
    sha256: str  # of the archive (recorded from the run that downloaded it)
    files: int  # files in dest
    format: str = SAVED_MODEL
    signature: str = ""  # what conversion made of it (formats other than savedModel)


def _stderr(message: str) -> None:
    print(f"fetch-model: {redact_text(message)}", file=sys.stderr, flush=True)


def _redacting(log: Callable[[str], None]) -> Callable[[str], None]:
    return lambda message: log(redact_text(message))


def _same_object(a: str, b: str) -> bool:
    """Same scheme, host and path: the query string and userinfo aside."""
    return redact_uri(a).split("?", 1)[0].split("#", 1)[0] == redact_uri(b).split("?", 1)[0].split("#", 1)[0]


def full_uri(uri: str, env: Mapping[str, str]) -> str:
    """``uri``, or PINSERVE_MODEL_URI when set and naming the same object (with its secret parts)."""
    given = env.get(URI_VAR, "").strip()
    return given if given and _same_object(given, uri) else uri


def _marker(dest: Path) -> Path:
    # Beside dest, not in it: the SavedModel directory stays exactly what the archive held, and TF
    # Serving ignores base-path entries that are not version numbers.
    return dest.parent / f".{dest.name}.pinserve-fetch.json"


def _count_files(tree: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(tree))


def _reusable(dest: Path, wanted: Mapping[str, object]) -> dict[str, object] | None:
    try:
        record = json.loads(_marker(dest).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format", SAVED_MODEL) != wanted.get("format", SAVED_MODEL):
        return None
    if any(record.get(k) != v for k, v in wanted.items()):
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
    model_format: str = SAVED_MODEL,
    inputs: Mapping[str, str] | None = None,
    outputs: Mapping[str, str] | None = None,
    limits: Limits | None = None,
) -> FetchResult:
    """Put the SavedModel that ``path`` names inside the archive at ``uri`` exactly at ``dest``.

    ``timeout`` is the stall timeout: a connect, or a read getting no byte, for that long fails (seconds);
    ``retries`` the extra attempts after a connection error, timeout or 5xx (backoff doubling from
    ``backoff`` seconds, capped at 30). ``limits`` the sizes and the deadline (its stall is ``timeout``).
    ``model_format`` frozenGraph or keras: ``path`` names the model file (or its directory), which is
    converted to a SavedModel; a frozen graph's signature maps ``inputs``/``outputs`` keys to tensors.
    Raises a ``FetchError`` subclass with a one-line message.
    """
    say = _redacting(log or _stderr)
    limits = dataclasses.replace(limits or Limits(), stall=timeout)
    limits.check()
    clock = Clock(limits.deadline)
    shown = redact_uri(uri)
    target = Path(dest)
    feeds, fetches = dict(inputs or {}), dict(outputs or {})
    if target.name in ("", ".", ".."):
        raise InvalidArgumentError(f"dest {str(dest)!r} must name the version directory, e.g. /models/rfcn/1")
    if timeout <= 0 or retries < 0 or backoff < 0:
        raise InvalidArgumentError("timeout must be positive, retries and backoff not negative")
    check_options(model_format, feeds, fetches)
    converting = model_format != SAVED_MODEL
    rel = clean_file_path(path) if converting else clean_path(path)
    single = converting and uri_names_model_file(uri, model_format)
    if not single:
        reject_single_file(shown)
    source = resolve(uri, env)

    wanted: dict[str, object] = {"uri": shown, "path": rel}
    if has_secret_part(uri):  # the record shows no secret, but another query must not pass for this one
        wanted["uri_sha256"] = hashlib.sha256(uri.encode()).hexdigest()
    if converting:
        wanted.update(format=model_format, inputs=feeds, outputs=fetches)
    record = _reusable(target, wanted)
    if record is not None:
        say(f"{target} already holds the SavedModel from {shown}; nothing to do")
        return FetchResult(target, source.url, str(record.get("selected", rel or ".")), True, 0,
                           str(record.get("sha256", "")), _count_files(target), model_format,
                           str(record.get("signature", "")))

    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _clean_stale(parent, target.name, say)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.fetch-", dir=parent))
    except OSError as err:
        raise LocalIOError(f"cannot prepare {parent}: {err.strerror or err}") from None
    try:
        archive = work / "download"
        say(f"fetching {shown} from {source.url} ({source.auth}; at most {human(limits.max_download)}, "
            f"{human(limits.max_unpacked)} unpacked, within {limits.deadline:g}s)")
        got = download(source, archive, limits=limits, clock=clock, retries=retries, backoff=backoff, log=say)
        say(f"downloaded {got.size} bytes, sha256 {got.sha256}")
        tree = work / "tree"
        tree.mkdir()
        signature = ""
        if single:  # the URI is the model file itself: keep its name (Keras reads the format from it)
            selected = PurePosixPath(urlsplit(uri).path).name
            os.rename(archive, tree / selected)
            unpacked = 1
        else:
            budget = Budget(limits.max_unpacked, f"the unpacked archive {shown}", "--max-unpacked-bytes",
                            "PINSERVE_FETCH_MAX_UNPACKED", clock)
            unpacked = unpack(archive_kind(shown, archive), archive, tree, shown, budget)
            archive.unlink()  # free the space before the tree moves
        if converting:
            model_file, selected = select_model_file(tree, "" if single else rel, model_format, shown)
            model_dir = work / "converted"
            say(f"converting {selected} ({model_format}) to a SavedModel")
            signature = convert(model_format, model_file, model_dir, inputs=feeds, outputs=fetches, log=say)
            say(f"converted: {signature}")
        else:
            model_dir, selected = select_saved_model(tree, rel, shown)
        try:
            materialize_external_links(model_dir)
            make_readable(model_dir)
            _install(model_dir, target, work)
            extra = {"signature": signature} if converting else {}
            _marker(target).write_text(json.dumps({**wanted, "selected": selected or ".", "sha256": got.sha256,
                                                   "size": got.size, **extra}))
        except OSError as err:
            raise LocalIOError(f"cannot install the SavedModel at {target}: {err.strerror or err}") from None
        files = _count_files(target)
        done = f"{model_format} {selected} converted to a SavedModel" if converting else f"SavedModel {selected or '.'}"
        say(f"unpacked {unpacked} files; {done} ({files} files) is now {target}")
        return FetchResult(target, source.url, selected or ".", False, got.size, got.sha256, files, model_format,
                           signature)
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
        description="Download a SavedModel archive and put its SavedModel directory at --dest; or convert a "
                    "frozen graph or Keras model (--format) to a SavedModel there.",
        epilog="exit codes: " + ", ".join(f"{code} {reason}" for code, reason in sorted(EXIT_REASONS.items())),
    )
    parser.add_argument("--uri", required=True, help="http(s)://, gs://bucket/key or s3://bucket/key of a "
                        ".tar.gz/.tgz/.tar/.zip archive (with --format frozenGraph/keras also the .pb/.h5 itself)")
    parser.add_argument("--path", default="", help="directory inside the archive holding saved_model.pb "
                        "(default: the only one); with --format frozenGraph/keras the .pb/.h5 file or its directory")
    parser.add_argument("--dest", required=True, help="version directory to create, e.g. /models/rfcn/1")
    parser.add_argument("--format", default=SAVED_MODEL, choices=FORMATS, dest="model_format",
                        help="savedModel (default): serve as is; frozenGraph (a GraphDef .pb, needs --input and "
                        "--output) or keras (an .h5 file): convert to a SavedModel (needs TensorFlow: the bench image)")
    parser.add_argument("--input", action="append", default=[], metavar="KEY=TENSOR",
                        help="frozenGraph: signature input KEY fed to TENSOR, e.g. ImageTensor=ImageTensor:0 "
                        "(repeatable)")
    parser.add_argument("--output", action="append", default=[], metavar="KEY=TENSOR",
                        help="frozenGraph: signature output KEY read from TENSOR, e.g. "
                        "SemanticPredictions=SemanticPredictions:0 (repeatable)")
    parser.add_argument("--timeout", "--stall-seconds", type=float, default=DEFAULT_STALL, dest="timeout",
                        help=f"stall timeout: seconds a connect, or a read, may go without a byte (default "
                        f"{DEFAULT_STALL:g})")
    parser.add_argument("--retries", type=int, default=5,
                        help="extra attempts after connection errors, timeouts and 5xx (default 5)")
    parser.add_argument("--max-download-bytes", type=parse_size, default=DEFAULT_MAX_DOWNLOAD, metavar="BYTES",
                        help="refuse an archive larger than this, by its Content-Length or while it streams "
                        "(default 32Gi; suffixes Ki Mi Gi Ti)")
    parser.add_argument("--max-unpacked-bytes", type=parse_size, default=DEFAULT_MAX_UNPACKED, metavar="BYTES",
                        help="refuse an archive that unpacks to more than this (default 64Gi)")
    parser.add_argument("--deadline-seconds", type=float, default=DEFAULT_DEADLINE,
                        help=f"the whole fetch, download and unpacking, within this (default {DEFAULT_DEADLINE:g})")
    return parser


def _watchdog(deadline: float, env: Mapping[str, str]) -> threading.Timer:
    """Ends the process shortly after the deadline even if a call blocks where the checks cannot see it."""
    def expire() -> None:
        line = (f"{FetchTimeoutError.reason}: the deadline of {deadline:g}s for the whole fetch passed "
                "(--deadline-seconds; the operator's PINSERVE_FETCH_DEADLINE_SECONDS); the watchdog ended it")
        print(f"pinserve fetch-model: {line}", file=sys.stderr, flush=True)
        write_termination_log(line, env)
        os._exit(FetchTimeoutError.exit_code)

    timer = threading.Timer(deadline + WATCHDOG_GRACE, expire)
    timer.daemon = True
    timer.start()
    return timer


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help or a usage error: argparse has printed why
        return exc.code if isinstance(exc.code, int) else 2
    shown = redact_uri(args.uri)
    limits = Limits(args.max_download_bytes, args.max_unpacked_bytes, args.deadline_seconds, args.timeout)
    watchdog = _watchdog(args.deadline_seconds, os.environ) if args.deadline_seconds > 0 else None
    try:
        result = fetch_model(full_uri(args.uri, os.environ), args.path, args.dest, timeout=args.timeout,
                             retries=args.retries, model_format=args.model_format,
                             inputs=parse_pairs(args.input, "--input"), outputs=parse_pairs(args.output, "--output"),
                             limits=limits)
    except FetchError as err:
        print(f"pinserve fetch-model: {err.line()}", file=sys.stderr, flush=True)
        write_termination_log(err.line())
        return err.exit_code
    except Exception as err:  # a bug: keep the trace in the log, the gist in the message
        print(redact_text(traceback.format_exc()), file=sys.stderr, flush=True)
        line = redact_text(f"FetchFailed: unexpected {type(err).__name__}: {err}")
        write_termination_log(line)
        return FetchError.exit_code
    finally:
        if watchdog is not None:
            watchdog.cancel()
    what = "reused" if result.reused else f"fetched {result.size} bytes (sha256 {result.sha256}) into"
    made = f"SavedModel converted from {result.format} {result.selected}" if result.format != SAVED_MODEL \
        else f"SavedModel {result.selected}"
    print(f"{what} {result.dest}: {made} from {shown}, {result.files} files")
    return 0
