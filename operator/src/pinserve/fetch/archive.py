"""Unpack a model archive safely and find the SavedModel directory inside it.

Safety: no absolute names, no '..', no links leaving the tree, no device files, FIFOs or sparse files;
tarfile's ``data`` filter runs as a second line where the interpreter has it. Bombs: every byte written
is counted against the unpacked limit (a member's declared size is checked before it is written, its
real bytes while they are), and so are the members (``MAX_MEMBERS``).
"""

from __future__ import annotations

import errno
import lzma
import os
import posixpath
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import urlsplit

from pinserve.fetch.errors import (
    AmbiguousSavedModelError,
    CorruptArchiveError,
    FetchError,
    InvalidArgumentError,
    LocalIOError,
    NoSavedModelError,
    NotAnArchiveError,
    PathNotFoundError,
    UnsafeArchiveError,
)
from pinserve.fetch.limits import MAX_MEMBERS, Budget

CHUNK = 1 << 20
MAX_LINK = 4096  # bytes of a zip symlink's target (read into memory)

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
ARCHIVE_SUFFIXES: dict[str, str] = {
    ".tar.gz": "tar", ".tgz": "tar", ".tar": "tar", ".zip": "zip",
    ".tar.bz2": "tar", ".tbz2": "tar", ".tar.xz": "tar", ".txz": "tar",
}
SUPPORTED = ".tar.gz, .tgz, .tar or .zip"
_LOCAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EMFILE})
_LISTED = 20


def _uri_name(uri: str) -> str:
    return PurePosixPath(urlsplit(uri).path).name


def kind_from_name(uri: str) -> str | None:
    name = _uri_name(uri).lower()
    for suffix, kind in ARCHIVE_SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    return None


def reject_single_file(uri: str) -> None:
    """Before any download: a URI naming one model file cannot become a SavedModel directory."""
    name = _uri_name(uri)
    lower = name.lower()
    if lower.endswith((".pb", ".pbtxt")):
        raise NotAnArchiveError(
            f"{uri} points at a single file {name!r}, which is not enough: TF Serving needs the whole "
            "SavedModel directory (saved_model.pb with its variables/ and assets/). Publish the directory "
            f"as {SUPPORTED} (e.g. tar -czf model.tar.gz -C export saved_model) and set spec.model.path, "
            "or use spec.model.pvc or spec.model.image; a frozen GraphDef is served with spec.model.format "
            "frozenGraph and its inputs and outputs")
    if lower.endswith((".h5", ".hdf5", ".keras")):
        raise NotAnArchiveError(
            f"{uri} points at {name!r}, a Keras file, not a SavedModel: if it holds a whole model "
            "(architecture and weights), set spec.model.format keras to convert it; weights alone (such as "
            "matterport's mask_rcnn_coco.h5) need the code that builds the model: export it with "
            "tf.saved_model.save there")
    if lower.endswith((".ckpt", ".index", ".onnx", ".tflite")):
        raise NotAnArchiveError(
            f"{uri} points at {name!r}, weights in another format, not a SavedModel: export it with "
            "tf.saved_model.save (the Mask R-CNN tutorial converts its .h5 that way) and publish the "
            f"SavedModel directory as {SUPPORTED}")


def sniff(file: Path) -> str | None:
    """'tar' (plain or gzip/bzip2/xz-compressed), 'zip', or None, from the magic bytes."""
    with file.open("rb") as f:
        head = f.read(512)
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")) or head[257:262] == b"ustar":
        return "tar"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    return None


def archive_kind(uri: str, file: Path) -> str:
    """Content decides; the name only tells what was expected."""
    named = kind_from_name(uri)
    sniffed = sniff(file)
    if sniffed:
        return sniffed
    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(64)
    if named == "tar" and _uri_name(uri).lower().endswith(".tar") and size >= 512:
        return "tar"  # an old v7 tar has no magic; tarfile will judge
    looks = "is empty" if size == 0 else (
        "looks like an HTML/XML page" if head.lstrip().startswith(b"<") else f"starts with {head[:16]!r}")
    if named:
        raise CorruptArchiveError(f"{uri} should be a {named} archive but its content ({size} bytes) {looks}")
    raise NotAnArchiveError(f"{uri} is not a {SUPPORTED} archive (by name or content; it {looks}): "
                       "publish the SavedModel directory as an archive")


def _member_path(name: str, uri: str) -> PurePosixPath:
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError(f"{uri}: member {name!r} has an absolute path")
    path = PurePosixPath(name)
    if ".." in path.parts:
        raise UnsafeArchiveError(f"{uri}: member {name!r} climbs out of the archive with '..'")
    return path


def _check_symlink(name: str, target: str, uri: str) -> None:
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchiveError(f"{uri}: symlink {name!r} -> {target!r} points outside the archive")


def _check_inside(path: Path, root: Path, name: str, uri: str) -> None:
    real, base = os.path.realpath(path), os.path.realpath(root)
    if real != base and not real.startswith(base + os.sep):
        raise UnsafeArchiveError(f"{uri}: member {name!r} would be written outside the archive (through a link)")


def _os_error(err: OSError, uri: str, member: str) -> Exception:
    if err.errno in _LOCAL_ERRNOS:
        return LocalIOError(f"unpacking {uri}: {member}: {err.strerror or err}")
    return CorruptArchiveError(f"{uri}: cannot unpack {member!r}: {err.strerror or err}")


def _count_member(count: int, uri: str) -> int:
    if count >= MAX_MEMBERS:
        raise UnsafeArchiveError(f"{uri}: more than {MAX_MEMBERS} members (an archive bomb?)")
    return count + 1


def _unpack_tar(archive: Path, root: Path, uri: str, budget: Budget) -> int:
    kwargs: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    files, member, members = 0, "", 0
    seen_files: set[str] = set()
    try:
        # Stream mode: one pass over the (compressed) archive.
        with tarfile.open(archive, mode="r|*") as tar:
            for info in tar:
                member = info.name
                members = _count_member(members, uri)
                path = _member_path(info.name, uri)
                if info.issparse():
                    raise UnsafeArchiveError(f"{uri}: member {info.name!r} is a sparse file (its size on disk is "
                                             "not what the archive holds)")
                if info.isdev() or info.isfifo():
                    raise UnsafeArchiveError(f"{uri}: member {info.name!r} is a device file or FIFO")
                if info.issym():
                    _check_symlink(info.name, info.linkname, uri)
                elif info.islnk():
                    link = str(_member_path(info.linkname, uri))
                    if link not in seen_files:
                        raise UnsafeArchiveError(f"{uri}: hard link {info.name!r} -> {info.linkname!r} does not "
                                            "point at a file earlier in the archive")
                elif not (info.isfile() or info.isdir()):
                    raise UnsafeArchiveError(f"{uri}: member {info.name!r} has unsupported type {info.type!r}")
                if str(path) == ".":
                    continue
                _check_inside((root / path).parent, root, info.name, uri)
                if info.isfile():  # tarfile writes exactly info.size bytes (or fails on a short archive)
                    budget.expect(info.size, f"member {info.name!r}")
                    budget.add(info.size)
                tar.extract(info, root, set_attrs=False, **kwargs)
                if info.issym():  # a chain of links can climb where no single one does
                    _check_inside(root / path, root, info.name, uri)
                if info.isfile() or info.islnk():
                    files += 1
                    seen_files.add(str(path))
    except FetchError:  # UnsafeArchiveError, TooLargeError, the deadline
        raise
    except tarfile.FilterError as err:
        raise UnsafeArchiveError(f"{uri}: {err}") from None
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as err:
        where = f" at member {member!r}" if member else ""
        raise CorruptArchiveError(f"{uri}: not a readable tar archive{where}: {err or type(err).__name__}") from None
    except OSError as err:
        raise _os_error(err, uri, member) from None
    return files


def _copy_counted(src: IO[bytes], dst: IO[bytes], budget: Budget) -> None:
    while chunk := src.read(CHUNK):
        budget.add(len(chunk))
        dst.write(chunk)


def _unpack_zip(archive: Path, root: Path, uri: str, budget: Budget) -> int:
    files, member, members = 0, "", 0
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                member = info.filename
                members = _count_member(members, uri)
                path = _member_path(info.filename, uri)
                if str(path) == ".":
                    continue
                mode = (info.external_attr >> 16) & 0xFFFF if info.create_system == 3 else 0
                target = root / path
                _check_inside(target.parent, root, info.filename, uri)
                if stat.S_ISLNK(mode):
                    if info.file_size > MAX_LINK:
                        raise UnsafeArchiveError(f"{uri}: symlink {info.filename!r} has a {info.file_size}-byte target")
                    link = zf.read(info).decode("utf-8")
                    _check_symlink(info.filename, link, uri)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(link, target)
                    _check_inside(target, root, info.filename, uri)
                elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                    raise UnsafeArchiveError(f"{uri}: member {info.filename!r} is a device file or FIFO")
                elif info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if target.is_symlink():
                        target.unlink()
                    # The declared size first, then the bytes as they come: a header may lie.
                    budget.expect(info.file_size, f"member {info.filename!r}")
                    with zf.open(info) as src, target.open("wb") as dst:
                        _copy_counted(src, dst, budget)
                    files += 1
    except zipfile.BadZipFile as err:
        where = f" at member {member!r}" if member else ""
        raise CorruptArchiveError(f"{uri}: not a readable zip archive{where}: {err}") from None
    except (zlib.error, EOFError, NotImplementedError, RuntimeError, UnicodeDecodeError) as err:
        raise CorruptArchiveError(f"{uri}: cannot unpack zip member {member!r}: {err}") from None
    except OSError as err:
        raise _os_error(err, uri, member) from None
    return files


def unpack(kind: str, archive: Path, root: Path, uri: str, budget: Budget) -> int:
    """Unpack into the (empty) directory ``root`` within ``budget`` (the unpacked limit); the number of files."""
    return _unpack_zip(archive, root, uri, budget) if kind == "zip" else _unpack_tar(archive, root, uri, budget)


def clean_path(path: str) -> str:
    """spec.model.path, normalised: '' for the archive root; absolute or '..' paths are refused."""
    text = path.strip()
    if not text:
        return ""
    pure = PurePosixPath(text)
    if pure.is_absolute() or ".." in pure.parts:
        raise InvalidArgumentError(f"path {path!r} must be relative to the archive root and must not contain '..'")
    if pure.name in SAVED_MODEL_FILES:  # forgive naming the file instead of its directory
        pure = pure.parent
    return "" if str(pure) == "." else str(pure)


def is_saved_model_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in SAVED_MODEL_FILES)


def saved_model_dirs(root: Path) -> list[str]:
    """Every directory under root holding saved_model.pb(txt), relative, '.' for root; links not followed."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if any(name in filenames for name in SAVED_MODEL_FILES):
            rel = Path(dirpath).relative_to(root).as_posix()
            found.append(rel)
    return sorted(found)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return shown + (f" and {len(items) - _LISTED} more" if len(items) > _LISTED else "")


def _no_saved_model(root: Path, uri: str) -> NoSavedModelError:
    top = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    hints = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                   if p.suffix.lower() in (".pb", ".h5", ".hdf5", ".keras", ".ckpt", ".index"))
    found = f"; model-like files found: {_listing(hints)}" if hints else ""
    return NoSavedModelError(
        f"{uri} holds no saved_model.pb anywhere (top level: {_listing(top) or 'nothing'}){found}. "
        "TF Serving needs a SavedModel directory (saved_model.pb, variables/, assets/): frozen graphs, "
        "checkpoints and Keras weights must be exported with tf.saved_model.save first")


def select_saved_model(root: Path, path: str, uri: str) -> tuple[Path, str]:
    """(directory, its path relative to root) of the SavedModel that ``path`` names, or the only one."""
    candidates = saved_model_dirs(root)
    if path:
        target = root / path
        _check_inside(target, root, path, uri)
        if is_saved_model_dir(target):
            return target, path
        if not candidates:
            raise _no_saved_model(root, uri)
        state = ("holds no saved_model.pb" if target.is_dir()
                 else "is not a directory in the archive" if target.exists() else "does not exist in the archive")
        raise PathNotFoundError(f"path {path!r} {state}; directories in {uri} that hold saved_model.pb: "
                           f"{_listing(candidates)} (set spec.model.path to one of them)")
    if not candidates:
        raise _no_saved_model(root, uri)
    if len(candidates) > 1:
        raise AmbiguousSavedModelError(f"{uri} holds {len(candidates)} SavedModels: {_listing(candidates)}; "
                                  "set spec.model.path to the one to serve")
    return root / candidates[0], candidates[0]


def materialize_external_links(model_dir: Path) -> None:
    """Links inside the SavedModel that point elsewhere in the archive would dangle once the
    directory moves: replace them by copies (the targets were checked to lie inside the archive)."""
    base = os.path.realpath(model_dir)
    for dirpath, dirnames, filenames in os.walk(model_dir):
        for name in dirnames + filenames:
            link = Path(dirpath) / name
            if not link.is_symlink():
                continue
            real = os.path.realpath(link)
            if real == base or real.startswith(base + os.sep) or not os.path.exists(real):
                continue
            link.unlink()
            if os.path.isdir(real):
                shutil.copytree(real, link)
            else:
                shutil.copy2(real, link)


def make_readable(tree: Path) -> None:
    """The server container may run as another user: directories 0755, files 0644 (0755 if executable)."""
    os.chmod(tree, 0o755)
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                executable = os.stat(path).st_mode & stat.S_IXUSR
                os.chmod(path, 0o755 if executable else 0o644)
