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
            # What object stores send (obstore reads them as the object's metadata).
            self.send_header("Last-Modified", "Tue, 01 Dec 2026 00:00:00 GMT")
            self.send_header("ETag", '"0"')
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
    files = {**saved_model("export/1"), "common/vocab.txt": b"a\nb\n"}
    extra = [link("export/1/assets/vocab.txt", "../../../common/vocab.txt"),
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
# gs:// and s3:// (obstore; s3 against a real S3 server in test_fetch_s3.py), credentials in http URIs


def test_gs_names_the_object_and_the_credential_chain() -> None:
    source = resolve("gs://intel-optimized-tensorflow/models/rfcn%20pretrained.tar.gz", {})
    assert (source.bucket, source.key) == ("intel-optimized-tensorflow", "models/rfcn pretrained.tar.gz")
    assert "workload identity" in source.auth and not source.options
    emulator = resolve("gs://b/k.tgz", {"STORAGE_EMULATOR_HOST": "http://localhost:4443"})
    assert emulator.endpoint == "http://localhost:4443" and emulator.allow_http
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


def test_gs_missing_object_names_bucket_and_key(store: Store, tmp_path: Path) -> None:
    env = {"GCS_ENDPOINT_URL": store.base, "GCS_TOKEN": "secret-token"}
    with pytest.raises(NotFoundError, match=r"bucket 'b', key 'missing.tar.gz'") as err:
        fetch("gs://b/missing.tar.gz", tmp_path / "g" / "1", env=env, retries=0)
    assert "secret-token" not in str(err.value)


def test_http_userinfo_is_basic_auth_and_never_shown(store: Store, tmp_path: Path) -> None:
    store.put("/final/m.tar.gz", tar_bytes(saved_model()))
    store.put("/b/m.tar.gz", Reply(302, b"", {"Location": store.base + "/final/m.tar.gz"}))
    said: list[str] = []
    uri = store.base.replace("http://", "http://alice:s3cr3t@") + "/b/m.tar.gz"
    fetch(uri, tmp_path / "r" / "1", log=said.append)
    assert store.requests("/b/m.tar.gz")[0].headers["authorization"] == "Basic YWxpY2U6czNjcjN0"
    assert "authorization" not in store.requests("/final/m.tar.gz")[0].headers  # not sent on to the redirect
    assert said and not any("s3cr3t" in line or "alice" in line for line in said)
    record = (tmp_path / "r" / ".1.pinserve-fetch.json").read_text()
    assert "s3cr3t" not in record


def test_s3_endpoint_region_and_credential_chain() -> None:
    assert resolve("s3://models/rfcn/m.tar.gz", {}).url == "https://s3.us-east-1.amazonaws.com/models/rfcn/m.tar.gz"
    assert "instance metadata" in resolve("s3://models/m.tgz", {}).auth
    env = {"AWS_REGION": "eu-west-1", "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/eks/token"}
    irsa = resolve("s3://models/m.tgz", env)
    assert irsa.region == "eu-west-1" and "IRSA" in irsa.auth and not irsa.options
    pod_identity = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.23/v1/credentials"}
    assert "Pod Identity" in resolve("s3://m/k.zip", pod_identity).auth
    assert "anonymous" in resolve("s3://m/k.zip", {"AWS_SKIP_SIGNATURE": "true"}).auth
    minio = resolve("s3://models/m.zip", {"AWS_ENDPOINT_URL": "http://minio.minio:9000/"})
    assert minio.url == "http://minio.minio:9000/models/m.zip" and minio.allow_http
    tls = resolve("s3://models/m.zip", {"AWS_S3_ENDPOINT": "minio:9000"})
    assert tls.endpoint == "https://minio:9000" and not tls.allow_http
    assert resolve("s3://models/m.zip", {"AWS_S3_ENDPOINT": "minio:9000", "S3_USE_HTTPS": "0"}).endpoint == \
        "http://minio:9000"
    assert resolve("s3://m/k.zip", {"AWS_ENDPOINT_URL": "https://x", "AWS_ALLOW_HTTP": "true"}).allow_http
    both = {"AWS_ENDPOINT_URL_S3": "http://a:1", "AWS_ENDPOINT_URL": "http://b:2"}
    assert resolve("s3://x/y.zip", both).endpoint == "http://a:1"
    keyed = resolve("s3://x/y.zip", {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "hush"})
    assert keyed.auth == "access key AKID…, region us-east-1" and "hush" not in repr(keyed.url + keyed.auth)


def test_json_record_beside_dest_is_not_a_version(store: Store, tmp_path: Path) -> None:
    uri = store.put("/m.tar.gz", tar_bytes(saved_model()))
    dest = tmp_path / "models" / "m" / "7"
    result = fetch(uri, dest)
    record = json.loads((dest.parent / ".7.pinserve-fetch.json").read_text())
    assert record == {"uri": uri, "path": "", "selected": ".", "sha256": result.sha256, "size": result.size}

