"""`pinserve fetch-model` against a real HTTP server on 127.0.0.1 serving archives built here."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from pinserve.fetch import (
    EXIT_REASONS,
    AmbiguousSavedModelError,
    CorruptArchiveError,
    DownloadFailedError,
    FetchTimeoutError,
    ForbiddenError,
    InvalidArgumentError,
    NoSavedModelError,
    NotAnArchiveError,
    NotFoundError,
    PathNotFoundError,
    UnsafeArchiveError,
    fetch_model,
    main,
    resolve,
    sigv4,
    write_termination_log,
)

pytestmark = pytest.mark.unit

RFCN = "rfcn_resnet101_fp32_coco"

# ---------------------------------------------------------------------------------------------
# archives


def saved_model(prefix: str = "", seed: bytes = b"m") -> dict[str, bytes]:
    """A SavedModel's layout with recognisable bytes (the protobuf content is never parsed)."""
    pre = f"{prefix.rstrip('/')}/" if prefix else ""
    return {
        f"{pre}saved_model.pb": b"\x08\x01\x12\x0csaved-model " + seed * 64,
        f"{pre}fingerprint.pb": b"fp" + seed,
        f"{pre}variables/variables.index": b"index " + seed,
        f"{pre}variables/variables.data-00000-of-00001": os.urandom(4096),
        f"{pre}assets/labels.txt": b"person\nbicycle\ncar\n",
    }


def rfcn_tree() -> dict[str, bytes]:
    """The shape of Intel's rfcn_resnet101_fp32_coco_pretrained_model.tar.gz."""
    return {
        f"{RFCN}/frozen_inference_graph.pb": b"frozen",
        f"{RFCN}/pipeline.config": b"model { faster_rcnn {} }",
        f"{RFCN}/model.ckpt.index": b"ckpt",
        **saved_model(f"{RFCN}/saved_model"),
    }


def tar_bytes(files: dict[str, bytes], mode: str = "w:gz", extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:  # type: ignore[call-overload]
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600  # the server container may be another user: must come out readable
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return buf.getvalue()


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


# ---------------------------------------------------------------------------------------------
# the server


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    truncate_to: int | None = None  # send a Content-Length for body but only this many bytes


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


class Store:
    """Routes a path to a sequence of replies (the last one repeats) and records every request."""

    def __init__(self) -> None:
        self.routes: dict[str, list[Reply]] = {}
        self.seen: list[Seen] = []
        self.base = ""

    def put(self, path: str, *replies: Reply | bytes) -> str:
        self.routes[path] = [r if isinstance(r, Reply) else Reply(body=r) for r in replies]
        return self.base + path

    def requests(self, path: str) -> list[Seen]:
        return [s for s in self.seen if unquote(urlsplit(s.path).path) == path]


def _handler(store: Store) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            store.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
            replies = store.routes.get(unquote(urlsplit(self.path).path))
            if not replies:
                reply = Reply(404, b"<Error><Code>NoSuchKey</Code><Message>The specified key does not exist."
                              b"</Message></Error>")
            else:
                reply = replies.pop(0) if len(replies) > 1 else replies[0]
            if reply.delay:
                time.sleep(reply.delay)
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            body = reply.body if reply.truncate_to is None else reply.body[: reply.truncate_to]
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)
            if reply.truncate_to is not None:
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    st = Store()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(st))
    server.daemon_threads = True
    st.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield st
    server.shutdown()
    server.server_close()


def fetch(uri: str, dest: Path, path: str = "", **kwargs: Any) -> Any:
    kwargs.setdefault("env", {})
    kwargs.setdefault("backoff", 0.01)
    kwargs.setdefault("timeout", 5.0)
    kwargs.setdefault("retries", 2)
    kwargs.setdefault("log", lambda _msg: None)
    return fetch_model(uri, path, dest, **kwargs)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_saved_model_at(dest: Path, expected: dict[str, bytes], prefix: str) -> None:
    pre = f"{prefix}/" if prefix else ""
    want = {k[len(pre):]: v for k, v in expected.items() if k.startswith(pre)}
    assert tree(dest) == want
    assert (dest / "saved_model.pb").is_file()
    for path in dest.rglob("*"):  # readable by another user
        assert path.stat().st_mode & 0o444 == 0o444


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".fetch-" in p.name)


# ---------------------------------------------------------------------------------------------
# happy paths


def test_tar_gz_nested_path_lands_exactly_at_dest(store: Store, tmp_path: Path) -> None:
    files = rfcn_tree()
    uri = store.put("/intel/rfcn_resnet101_fp32_coco_pretrained_model.tar.gz", tar_bytes(files))
    dest = tmp_path / "models" / "rfcn" / "1"
    result = fetch(uri, dest, f"{RFCN}/saved_model")
    assert_saved_model_at(dest, files, f"{RFCN}/saved_model")
    assert not (dest / "frozen_inference_graph.pb").exists()
    assert result.selected == f"{RFCN}/saved_model" and not result.reused
    assert result.sha256 == hashlib.sha256(store.routes[urlsplit(uri).path][0].body).hexdigest()
    assert result.files == 5
    assert leftovers(dest.parent) == []
    # TF Serving scans the base path for numbered versions; nothing else numeric is there.
    assert [p.name for p in dest.parent.iterdir() if not p.name.startswith(".")] == ["1"]


def test_zip_auto_detects_the_only_saved_model(store: Store, tmp_path: Path) -> None:
    files = {"README.md": b"hi", **saved_model("export/mask_rcnn/1")}
    uri = store.put("/m/mask_rcnn.zip", zip_bytes(files))
    dest = tmp_path / "models" / "mask" / "3"
    result = fetch(uri, dest)
    assert result.selected == "export/mask_rcnn/1"
    assert_saved_model_at(dest, files, "export/mask_rcnn/1")


@pytest.mark.parametrize(("name", "mode"), [("m.tar", "w"), ("m.tgz", "w:gz"), ("m", "w:gz"), ("m.tar.xz", "w:xz")])
def test_saved_model_at_archive_root_any_tar_flavour(store: Store, tmp_path: Path, name: str, mode: str) -> None:
    files = saved_model()
    uri = store.put(f"/{name}", tar_bytes(files, mode))
    result = fetch(uri, tmp_path / "m" / "1")
    assert result.selected == "."
    assert_saved_model_at(tmp_path / "m" / "1", files, "")


def test_path_naming_the_pb_file_is_forgiven(store: Store, tmp_path: Path) -> None:
    uri = store.put("/r.tar.gz", tar_bytes(rfcn_tree()))
    result = fetch(uri, tmp_path / "r" / "1", f"{RFCN}/saved_model/saved_model.pb")
    assert result.selected == f"{RFCN}/saved_model"


def test_second_run_reuses_a_complete_dest(store: Store, tmp_path: Path) -> None:
    uri = store.put("/r.tar.gz", tar_bytes(rfcn_tree()))
    dest = tmp_path / "models" / "rfcn" / "1"
    first = fetch(uri, dest, f"{RFCN}/saved_model")
    inode = (dest / "saved_model.pb").stat().st_ino
    second = fetch(uri, dest, f"{RFCN}/saved_model")
    assert second.reused and second.sha256 == first.sha256 and second.selected == first.selected
    assert len(store.requests("/r.tar.gz")) == 1
    assert (dest / "saved_model.pb").stat().st_ino == inode
    # A different source is not "complete": fetched again and replaced.
    other = saved_model(seed=b"z")
    uri2 = store.put("/other.tar.gz", tar_bytes(other))
    third = fetch(uri2, dest)
    assert not third.reused
    assert_saved_model_at(dest, other, "")
    assert leftovers(dest.parent) == []


def test_interrupted_run_leftovers_and_partial_dest_are_replaced(store: Store, tmp_path: Path) -> None:
    files = saved_model()
    uri = store.put("/m.tar.gz", tar_bytes(files))
    dest = tmp_path / "models" / "m" / "1"
    stale = dest.parent / ".1.fetch-abc123"
    (stale / "tree").mkdir(parents=True)
    (stale / "download").write_bytes(b"half an archive")
    dest.mkdir()
    (dest / "variables").mkdir()  # a dest without saved_model.pb or record is not complete
    result = fetch(uri, dest)
    assert not result.reused
    assert_saved_model_at(dest, files, "")
    assert leftovers(dest.parent) == []


def test_500_then_200_is_retried(store: Store, tmp_path: Path) -> None:
    body = tar_bytes(saved_model())
    uri = store.put("/flaky.tar.gz", Reply(500, b"oops"), Reply(503, b"busy"), body)
    messages: list[str] = []
    fetch(uri, tmp_path / "f" / "1", log=messages.append)
    assert len(store.requests("/flaky.tar.gz")) == 3
    assert sum("retrying" in m for m in messages) == 2


def test_connection_cut_mid_body_is_retried(store: Store, tmp_path: Path) -> None:
    body = tar_bytes(saved_model())
    uri = store.put("/cut.tar.gz", Reply(body=body, truncate_to=100), body)
    fetch(uri, tmp_path / "c" / "1")
    assert len(store.requests("/cut.tar.gz")) == 2


def test_persistent_5xx_gives_up_after_the_bounded_retries(store: Store, tmp_path: Path) -> None:
    uri = store.put("/down.tar.gz", Reply(502, b"bad gateway"))
    with pytest.raises(DownloadFailedError, match=r"HTTP 502.*gave up after 3 attempts"):
        fetch(uri, tmp_path / "d" / "1", retries=2)
    assert len(store.requests("/down.tar.gz")) == 3
    assert leftovers(tmp_path / "d") == []


def test_tensorflow_saved_model_roundtrip(store: Store, tmp_path: Path) -> None:
    """A real SavedModel from tensorflow, fetched and loaded again (one TF import, in a child)."""
    if importlib.util.find_spec("tensorflow") is None:  # not imported here: it costs seconds
        pytest.skip("tensorflow is not installed")
    script = r"""
import os, sys, tarfile
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
from pinserve.fetch import fetch_model
export, archive, url_file, dest = sys.argv[1:5]

class Doubler(tf.Module):
    def __init__(self):
        self.k = tf.Variable(2.0)
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def __call__(self, x):
        return {"y": x * self.k}

m = Doubler()
tf.saved_model.save(m, export + "/model/saved_model", signatures={"serving_default": m.__call__})
with tarfile.open(archive, "w:gz") as tar:
    tar.add(export + "/model", arcname="model")
open(url_file + ".ready", "w").close()
import time
while not os.path.exists(url_file):
    time.sleep(0.05)
fetch_model(open(url_file).read(), "model/saved_model", dest, env={}, log=lambda m: None)
loaded = tf.saved_model.load(dest)
print(loaded.signatures["serving_default"](tf.constant([1.0, 3.0]))["y"].numpy().tolist())
"""
    archive = tmp_path / "tf.tar.gz"
    url_file = tmp_path / "url"
    dest = tmp_path / "models" / "doubler" / "1"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "export"), str(archive),
                              str(url_file), str(dest)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env)
    deadline = time.monotonic() + 240
    while not (tmp_path / "url.ready").exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            _, err = child.communicate()
            pytest.fail(f"tensorflow export failed: {err.decode()[-2000:]}")
        time.sleep(0.1)
    url_file.write_text(store.put("/tf.tar.gz", archive.read_bytes()))
    out, err = child.communicate(timeout=240)
    assert child.returncode == 0, err.decode()[-2000:]
    assert out.decode().strip().splitlines()[-1] == "[2.0, 6.0]"
    assert (dest / "saved_model.pb").is_file()
    assert any((dest / "variables").iterdir())


# ---------------------------------------------------------------------------------------------
# wrong archives and wrong paths


def test_wrong_path_lists_the_directories_that_hold_a_saved_model(store: Store, tmp_path: Path) -> None:
    uri = store.put("/r.tar.gz", tar_bytes(rfcn_tree()))
    with pytest.raises(PathNotFoundError) as err:
        fetch(uri, tmp_path / "r" / "1", RFCN)
    message = str(err.value)
    assert "holds no saved_model.pb" in message and f"{RFCN}/saved_model" in message
    assert "\n" not in message
    with pytest.raises(PathNotFoundError, match="does not exist in the archive"):
        fetch(uri, tmp_path / "r" / "1", "rfcn/saved_model")
    assert not (tmp_path / "r" / "1").exists()


def test_several_saved_models_without_path_are_ambiguous(store: Store, tmp_path: Path) -> None:
    uri = store.put("/two.zip", zip_bytes({**saved_model("a/1"), **saved_model("b/2")}))
    with pytest.raises(AmbiguousSavedModelError, match=r"2 SavedModels: a/1, b/2"):
        fetch(uri, tmp_path / "t" / "1")


def test_archive_without_saved_model_says_so(store: Store, tmp_path: Path) -> None:
    files = {f"{RFCN}/frozen_inference_graph.pb": b"g", f"{RFCN}/pipeline.config": b"c"}
    uri = store.put("/frozen.tar.gz", tar_bytes(files))
    with pytest.raises(NoSavedModelError, match=r"frozen_inference_graph\.pb") as err:
        fetch(uri, tmp_path / "x" / "1")
    assert "no saved_model.pb" in str(err.value)
    with pytest.raises(NoSavedModelError):  # a path does not change that answer
        fetch(uri, tmp_path / "x" / "1", f"{RFCN}/saved_model")


def test_single_saved_model_pb_uri_is_refused_before_download(store: Store, tmp_path: Path) -> None:
    uri = store.put(f"/{RFCN}/saved_model/saved_model.pb", b"\x08\x01")
    with pytest.raises(NotAnArchiveError, match=r"single file 'saved_model.pb'.*variables/"):
        fetch(uri, tmp_path / "s" / "1")
    with pytest.raises(NotAnArchiveError, match=r"tf.saved_model.save"):
        fetch(store.base + "/mask_rcnn_coco.h5", tmp_path / "s" / "1")
    assert store.seen == []


def test_unknown_content_without_archive_name_is_not_an_archive(store: Store, tmp_path: Path) -> None:
    uri = store.put("/download", b"\x08\x01\x12\x04blob" * 10)
    with pytest.raises(NotAnArchiveError, match=r"not a \.tar\.gz, \.tgz, \.tar or \.zip archive"):
        fetch(uri, tmp_path / "u" / "1")


def test_truncated_gzip_is_corrupt(store: Store, tmp_path: Path) -> None:
    body = tar_bytes(rfcn_tree())
    uri = store.put("/trunc.tar.gz", body[: len(body) // 2])
    with pytest.raises(CorruptArchiveError, match="not a readable tar archive"):
        fetch(uri, tmp_path / "t" / "1", f"{RFCN}/saved_model")
    assert not (tmp_path / "t" / "1").exists() and leftovers(tmp_path / "t") == []


def test_gzip_that_is_not_a_tar_is_corrupt(store: Store, tmp_path: Path) -> None:
    uri = store.put("/notar.tar.gz", gzip.compress(os.urandom(2048)))
    with pytest.raises(CorruptArchiveError):
        fetch(uri, tmp_path / "g" / "1")


def test_html_error_page_named_tar_gz_is_corrupt(store: Store, tmp_path: Path) -> None:
    uri = store.put("/page.tar.gz", b"<!DOCTYPE html><html><body>Sign in</body></html>")
    with pytest.raises(CorruptArchiveError, match="HTML"):
        fetch(uri, tmp_path / "h" / "1")


def test_corrupt_zip(store: Store, tmp_path: Path) -> None:
    good = zip_bytes(saved_model())
    uri = store.put("/cut.zip", good[: len(good) - 40])  # central directory gone
    with pytest.raises(CorruptArchiveError, match="zip"):
        fetch(uri, tmp_path / "z" / "1")
    flipped = bytearray(good)
    offset = good.index(b"variables/variables.index") + 60  # inside compressed data
    flipped[offset] ^= 0xFF
    uri = store.put("/crc.zip", bytes(flipped))
    with pytest.raises(CorruptArchiveError):
        fetch(uri, tmp_path / "z" / "1")
    assert not (tmp_path / "z" / "1").exists()


# ---------------------------------------------------------------------------------------------
# hostile archives


@pytest.fixture(params=["data-filter", "own-checks"])
def tar_checks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hostile tars are refused with tarfile's data filter and, as on interpreters without it,
    by pinserve's own checks alone."""
    if request.param == "own-checks":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile data filter")


def _device() -> tarfile.TarInfo:
    info = tarfile.TarInfo("saved_model/dev")
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info


@pytest.mark.parametrize(("extra", "files", "match"), [
    ([], {"../evil": b"x"}, "'..'"),
    ([], {"saved_model/../../evil": b"x"}, "'..'"),
    ([], {"/tmp/pinserve-abs-evil": b"x"}, "absolute"),
    ([link("saved_model/escape", "../../evil")], {}, "outside the archive"),
    ([link("saved_model/etc", "/etc/passwd")], {}, "outside the archive"),
    ([link("saved_model/hard", "/etc/passwd", tarfile.LNKTYPE)], {}, "absolute"),
    ([link("saved_model/hard", "nowhere", tarfile.LNKTYPE)], {}, "earlier in the archive"),
    ([_device()], {}, "device"),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink-up", "symlink-abs", "hardlink-abs", "hardlink-dangling",
        "device"])
@pytest.mark.usefixtures("tar_checks")
def test_hostile_tar_is_rejected(store: Store, tmp_path: Path, extra: list[tarfile.TarInfo],
                                 files: dict[str, bytes], match: str) -> None:
    body = tar_bytes({**saved_model("saved_model"), **files}, extra=extra)
    uri = store.put("/evil.tar.gz", body)
    dest = tmp_path / "work" / "models" / "e" / "1"
    with pytest.raises(UnsafeArchiveError, match=match):
        fetch(uri, dest)
    assert not dest.exists() and leftovers(dest.parent) == []
    assert not (tmp_path / "work" / "models" / "evil").exists()
    assert not (tmp_path / "work" / "models" / "e" / "evil").exists()
    assert not Path("/tmp/pinserve-abs-evil").exists()


@pytest.mark.usefixtures("tar_checks")
def test_symlink_chain_climbing_out_is_rejected(store: Store, tmp_path: Path) -> None:
    # Each link alone stays inside by its name; followed one through the other they climb out.
    extra = [link("a/b/up", ".."), link("a/b/up2", "up/.."), link("a/b/up3", "up2/..")]
    uri = store.put("/chain.tar", tar_bytes(saved_model("a"), "w", extra))
    with pytest.raises(UnsafeArchiveError):
        fetch(uri, tmp_path / "m" / "c" / "1")


@pytest.mark.parametrize(("files", "links", "match"), [
    ({"../evil": b"x"}, {}, "'..'"),
    ({"/abs-evil": b"x"}, {}, "absolute"),
    ({}, {"m/escape": "../../../evil"}, "outside the archive"),
], ids=["dotdot", "absolute", "symlink-up"])
def test_hostile_zip_is_rejected(store: Store, tmp_path: Path, files: dict[str, bytes],
                                 links: dict[str, str], match: str) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in {**saved_model("m"), **files}.items():
            zf.writestr(zipfile.ZipInfo(name), data)  # ZipInfo keeps the name as given
        for name, target in links.items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = 0o120777 << 16
            zf.writestr(info, target)
    uri = store.put("/evil.zip", buf.getvalue())
    dest = tmp_path / "work" / "e" / "1"
    with pytest.raises(UnsafeArchiveError, match=match):
        fetch(uri, dest)
    assert not dest.exists() and not (tmp_path / "evil").exists() and not (tmp_path / "work" / "evil").exists()


def test_links_inside_the_archive_survive(store: Store, tmp_path: Path) -> None:
    """A link from the SavedModel to elsewhere in the archive is copied, one inside it kept."""
    files = {**saved_model("export/1"), "shared/vocab.txt": b"a\nb\n"}
    extra = [link("export/1/assets/vocab.txt", "../../../shared/vocab.txt"),
             link("export/1/assets/labels-again.txt", "labels.txt")]
    uri = store.put("/links.tar.gz", tar_bytes(files, extra=extra))
    dest = tmp_path / "l" / "1"
    fetch(uri, dest, "export/1")
    assert (dest / "assets" / "vocab.txt").read_bytes() == b"a\nb\n"
    assert not (dest / "assets" / "vocab.txt").is_symlink()
    assert (dest / "assets" / "labels-again.txt").read_bytes() == files["export/1/assets/labels.txt"]


# ---------------------------------------------------------------------------------------------
# HTTP errors, timeouts, the CLI and the termination log


def test_404_is_not_found(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"HTTP 404.*NoSuchKey") as err:
        fetch(store.base + "/missing.tar.gz", tmp_path / "n" / "1")
    assert len(store.requests("/missing.tar.gz")) == 1  # not retried
    assert err.value.exit_code == 10


def test_403_is_forbidden_with_the_store_s_explanation(store: Store, tmp_path: Path) -> None:
    uri = store.put("/secret.tar.gz", Reply(403, b"<?xml version='1.0'?><Error><Code>AccessDenied</Code>"
                                                  b"<Message>Access Denied</Message></Error>"))
    with pytest.raises(ForbiddenError, match=r"anonymously.*AccessDenied: Access Denied.*credentialsSecret"):
        fetch(uri, tmp_path / "s" / "1")
    assert len(store.requests("/secret.tar.gz")) == 1


def test_slow_server_times_out(store: Store, tmp_path: Path) -> None:
    uri = store.put("/slow.tar.gz", Reply(body=tar_bytes(saved_model()), delay=1.0))
    with pytest.raises(FetchTimeoutError, match=r"no answer within 0.2s.*2 attempts") as err:
        fetch(uri, tmp_path / "s" / "1", timeout=0.2, retries=1)
    assert err.value.exit_code == 13


def test_unreachable_host_is_a_download_failure(tmp_path: Path) -> None:
    import socket  # noqa: PLC0415

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadFailedError, match="cannot connect"):
        fetch(f"http://127.0.0.1:{port}/m.tar.gz", tmp_path / "u" / "1", retries=1)


def test_main_writes_one_line_to_the_termination_log(store: Store, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setenv("PINSERVE_TERMINATION_LOG", str(log))
    code = main(["--uri", store.base + "/missing.tar.gz", "--dest", str(tmp_path / "m" / "1"),
                 "--retries", "0"])
    assert code == 10 and EXIT_REASONS[code] == "NotFound"
    text = log.read_text()
    assert text.startswith("NotFound: ") and text.count("\n") == 1 and "missing.tar.gz" in text
    assert "NotFound:" in capsys.readouterr().err

    store.put("/r.tar.gz", tar_bytes(rfcn_tree()))
    code = main(["--uri", store.base + "/r.tar.gz", "--path", RFCN, "--dest", str(tmp_path / "m" / "1")])
    assert code == 17 and log.read_text().startswith("PathNotFound: ")
    assert f"{RFCN}/saved_model" in log.read_text()

    code = main(["--uri", store.base + "/r.tar.gz", "--path", f"{RFCN}/saved_model",
                 "--dest", str(tmp_path / "m" / "1")])
    assert code == 0
    assert "SavedModel rfcn_resnet101_fp32_coco/saved_model" in capsys.readouterr().out

    assert main(["--uri", "ftp://x/y.tar.gz", "--dest", str(tmp_path / "m" / "1")]) == 3
    assert log.read_text().startswith("InvalidArgument: ")
    assert main(["--dest", "x"]) == 2  # usage


def test_termination_log_is_written_only_where_it_can_be(tmp_path: Path) -> None:
    assert not write_termination_log("X: y", {"PINSERVE_TERMINATION_LOG": str(tmp_path / "no" / "such" / "log")})
    target = tmp_path / "log"
    assert write_termination_log("Reason: " + "é" * 5000 + "\nsecond line", {"PINSERVE_TERMINATION_LOG": str(target)})
    text = target.read_text(encoding="utf-8")
    assert len(text.encode()) <= 4001 and text.count("\n") == 1
    if not Path("/dev/termination-log").exists():  # outside a container the default is left alone
        assert not write_termination_log("X: y", {})
        assert not Path("/dev/termination-log").exists()


def test_exit_codes_are_distinct() -> None:
    from pinserve.fetch.errors import ERRORS  # noqa: PLC0415

    codes = [cls.exit_code for cls in ERRORS]
    assert len(set(codes)) == len(codes) and 0 not in codes and 2 not in codes
    assert len({cls.reason for cls in ERRORS}) == len(ERRORS)
    assert all(reason.isalnum() and reason[0].isupper() for reason in EXIT_REASONS.values())


def test_bad_arguments(tmp_path: Path) -> None:
    for path in ("/abs", "a/../../b"):
        with pytest.raises(InvalidArgumentError):
            fetch("http://127.0.0.1:9/m.tar.gz", tmp_path / "a" / "1", path)
    for uri in ("s3://bucket", "gs://bucket/", "s3://b/k?versionId=1", "file:///m.tar.gz"):
        with pytest.raises(InvalidArgumentError):
            resolve(uri, {})
    with pytest.raises(InvalidArgumentError, match="AWS_SECRET_ACCESS_KEY"):
        resolve("s3://b/k.tar.gz", {"AWS_ACCESS_KEY_ID": "AKID"})


# ---------------------------------------------------------------------------------------------
# gs:// and s3://


def test_gs_maps_to_the_xml_api() -> None:
    source = resolve("gs://intel-optimized-tensorflow/models/rfcn pretrained.tar.gz", {})
    assert source.url == "https://storage.googleapis.com/intel-optimized-tensorflow/models/rfcn%20pretrained.tar.gz"
    assert source.auth_headers() == {}
    emulator = resolve("gs://b/k.tgz", {"STORAGE_EMULATOR_HOST": "http://localhost:4443"})
    assert emulator.url == "http://localhost:4443/b/k.tgz"


def test_gs_sends_the_bearer_token(store: Store, tmp_path: Path) -> None:
    store.put("/models-bucket/rfcn/model.tar.gz", tar_bytes(rfcn_tree()))
    env = {"GCS_ENDPOINT_URL": store.base, "GOOGLE_OAUTH_ACCESS_TOKEN": "ya29.token"}
    fetch("gs://models-bucket/rfcn/model.tar.gz", tmp_path / "g" / "1", f"{RFCN}/saved_model", env=env)
    (seen,) = store.requests("/models-bucket/rfcn/model.tar.gz")
    assert seen.headers["authorization"] == "Bearer ya29.token"
    fetch("gs://models-bucket/rfcn/model.tar.gz", tmp_path / "g2" / "1", f"{RFCN}/saved_model",
          env={"GCS_ENDPOINT_URL": store.base, "GCS_TOKEN": "t1", "GOOGLE_OAUTH_ACCESS_TOKEN": "t2"})
    assert store.requests("/models-bucket/rfcn/model.tar.gz")[-1].headers["authorization"] == "Bearer t1"


def test_credentials_do_not_follow_redirects(store: Store, tmp_path: Path) -> None:
    store.put("/final/m.tar.gz", tar_bytes(saved_model()))
    store.put("/b/m.tar.gz", Reply(302, b"", {"Location": store.base + "/final/m.tar.gz"}))
    fetch("gs://b/m.tar.gz", tmp_path / "r" / "1", env={"GCS_ENDPOINT_URL": store.base, "GCS_TOKEN": "secret"})
    assert store.requests("/b/m.tar.gz")[0].headers["authorization"] == "Bearer secret"
    assert "authorization" not in store.requests("/final/m.tar.gz")[0].headers


def test_s3_url_mapping() -> None:
    assert resolve("s3://models/rfcn/m.tar.gz", {}).url == "https://models.s3.amazonaws.com/rfcn/m.tar.gz"
    env = {"AWS_REGION": "eu-west-1"}
    assert resolve("s3://models/m.tgz", env).url == "https://models.s3.eu-west-1.amazonaws.com/m.tgz"
    assert resolve("s3://my.models/m.tgz", env).url == "https://s3.eu-west-1.amazonaws.com/my.models/m.tgz"
    assert resolve("s3://models/a b+c.zip", {}).url == "https://models.s3.amazonaws.com/a%20b%2Bc.zip"
    minio = {"AWS_ENDPOINT_URL": "http://minio.minio:9000/"}
    assert resolve("s3://models/m.zip", minio).url == "http://minio.minio:9000/models/m.zip"
    assert resolve("s3://models/m.zip", {"AWS_S3_ENDPOINT": "minio:9000"}).url == "https://minio:9000/models/m.zip"
    assert resolve("s3://models/m.zip", {"AWS_S3_ENDPOINT": "minio:9000", "S3_USE_HTTPS": "0"}).url == \
        "http://minio:9000/models/m.zip"
    both = {"AWS_ENDPOINT_URL_S3": "http://a:1", "AWS_ENDPOINT_URL": "http://b:2"}
    assert resolve("s3://x/y.zip", both).url == "http://a:1/x/y.zip"
    anonymous = resolve("s3://models/m.zip", minio)
    assert anonymous.auth == "anonymous" and anonymous.auth_headers() == {}


def test_s3_request_is_signed_and_the_signature_matches_what_was_sent(store: Store, tmp_path: Path) -> None:
    store.put("/models/rfcn/model v1.tar.gz", tar_bytes(rfcn_tree()))
    env = {"AWS_ENDPOINT_URL": store.base, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
           "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "AWS_SESSION_TOKEN": "sess/tok",
           "AWS_REGION": "eu-central-1"}
    fetch("s3://models/rfcn/model v1.tar.gz", tmp_path / "s" / "1", f"{RFCN}/saved_model", env=env)
    (seen,) = store.requests("/models/rfcn/model v1.tar.gz")
    assert seen.path == "/models/rfcn/model%20v1.tar.gz"
    h = seen.headers
    assert h["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert h["x-amz-security-token"] == "sess/tok"
    date = h["x-amz-date"]
    assert abs(datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp() - time.time()) < 300
    signed = "host;x-amz-content-sha256;x-amz-date;x-amz-security-token"
    scope = f"{date[:8]}/eu-central-1/s3/aws4_request"
    prefix = f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{scope}, SignedHeaders={signed}, "
    assert h["authorization"].startswith(prefix)
    # What a server does: rebuild the canonical request from the request it received.
    creq, got_signed = sigv4.canonical_request("GET", seen.path, "", {n: h[n] for n in signed.split(";")},
                                               "UNSIGNED-PAYLOAD")
    assert got_signed == signed
    key = sigv4.signing_key(env["AWS_SECRET_ACCESS_KEY"], date[:8], "eu-central-1", "s3")
    import hmac  # noqa: PLC0415

    expected = hmac.new(key, sigv4.string_to_sign(date, scope, creq).encode(), hashlib.sha256).hexdigest()
    assert h["authorization"] == prefix + f"Signature={expected}"


def test_s3_403_names_the_credentials_used(store: Store, tmp_path: Path) -> None:
    store.put("/models/m.tar.gz", Reply(403, b"<Error><Code>SignatureDoesNotMatch</Code></Error>"))
    env = {"AWS_ENDPOINT_URL": store.base, "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s"}
    with pytest.raises(ForbiddenError, match=r"AWS SigV4 \(key AKID…, region us-east-1\).*SignatureDoesNotMatch"):
        fetch("s3://models/m.tar.gz", tmp_path / "s" / "1", env=env)


# AWS's published vectors (S3 "Signature Version 4, header-based: GET Object" example and the
# signing-key derivation example of the general SigV4 documentation).
EXAMPLE_SECRET_S3 = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
EXAMPLE_SECRET_IAM = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def test_sigv4_signing_key_vector() -> None:
    key = sigv4.signing_key(EXAMPLE_SECRET_IAM, "20120215", "us-east-1", "iam")
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


def test_sigv4_get_object_vector() -> None:
    headers = sigv4.sign_request(
        "GET", "https://examplebucket.s3.amazonaws.com/test.txt",
        access_key="AKIAIOSFODNN7EXAMPLE", secret_key=EXAMPLE_SECRET_S3, region="us-east-1",
        headers={"Range": "bytes=0-9"}, payload_hash=sigv4.EMPTY_SHA256, now=datetime(2013, 5, 24, tzinfo=UTC),
    )
    creq, _ = sigv4.canonical_request(
        "GET", "/test.txt", "",
        {"Host": "examplebucket.s3.amazonaws.com", "Range": "bytes=0-9",
         "x-amz-content-sha256": sigv4.EMPTY_SHA256, "x-amz-date": "20130524T000000Z"},
        sigv4.EMPTY_SHA256)
    assert hashlib.sha256(creq.encode()).hexdigest() == \
        "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    assert headers["x-amz-date"] == "20130524T000000Z"


def test_sigv4_canonical_forms() -> None:
    assert sigv4.uri_encode("a b/c~d._-*+", keep_slash=True) == "a%20b/c~d._-%2A%2B"
    assert sigv4.uri_encode("a/b", keep_slash=False) == "a%2Fb"
    assert sigv4.canonical_query("prefix=J&max-keys=2&a=") == "a=&max-keys=2&prefix=J"
    creq, signed = sigv4.canonical_request("get", "", "", {" X-Custom ": "  a   b  ", "Host": "h"}, "UNSIGNED-PAYLOAD")
    assert creq == "GET\n/\n\nhost:h\nx-custom:a b\n\nhost;x-custom\nUNSIGNED-PAYLOAD"
    assert signed == "host;x-custom"


def test_json_record_beside_dest_is_not_a_version(store: Store, tmp_path: Path) -> None:
    uri = store.put("/m.tar.gz", tar_bytes(saved_model()))
    dest = tmp_path / "models" / "m" / "7"
    result = fetch(uri, dest)
    record = json.loads((dest.parent / ".7.pinserve-fetch.json").read_text())
    assert record == {"uri": uri, "path": "", "selected": ".", "sha256": result.sha256, "size": result.size}

