"""The fetcher's hard limits (sizes, deadline, stall) and its redaction of credentials, against real
servers on 127.0.0.1: the archive server of test_fetch.py and raw sockets that trickle, stall or never end."""

from __future__ import annotations

import contextlib
import io
import socket
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pinserve.fetch import (
    FetchTimeoutError,
    Limits,
    NotFoundError,
    TooLargeError,
    UnsafeArchiveError,
    main,
)
from pinserve.fetch.errors import FetchError
from pinserve.fetch.limits import parse_size
from pinserve.redact import has_secret_part, redact_text, redact_uri
from tests.unit.test_fetch import Store, fetch, saved_model, store, tar_bytes

__all__ = ["store"]  # the fixture, used by name
pytestmark = pytest.mark.unit

SIGNED = ("https://bucket.s3.amazonaws.com/m.tar.gz?X-Amz-Algorithm=AWS4-HMAC-SHA256"
          "&X-Amz-Credential=AKIAEXAMPLE%2F20261201%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=deadbeef42")


# ---------------------------------------------------------------------------------------------
# redaction


def test_redact_uri_drops_query_fragment_and_userinfo() -> None:
    assert redact_uri(SIGNED) == "https://bucket.s3.amazonaws.com/m.tar.gz?REDACTED"
    assert redact_uri("https://storage.googleapis.com/b/m.tgz?X-Goog-Signature=abc&X-Goog-Date=1") == \
        "https://storage.googleapis.com/b/m.tgz?REDACTED"
    assert redact_uri("https://acct.blob.core.windows.net/c/m.zip?sv=2024&sig=abc%3D") == \
        "https://acct.blob.core.windows.net/c/m.zip?REDACTED"
    assert redact_uri("https://alice:pw@host:8443/m.tar.gz#x") == "https://***@host:8443/m.tar.gz#REDACTED"
    assert redact_uri("s3://models/rfcn/m.tar.gz") == "s3://models/rfcn/m.tar.gz"
    assert has_secret_part(SIGNED) and has_secret_part("http://u:p@h/x") and not has_secret_part("gs://b/k")


def test_redact_text_finds_every_url_and_secret_pairs() -> None:
    text = (f"fetching {SIGNED} failed; retried 'http://u:hunter2@h/x.tgz?token=t0k' and "
            "(https://h/y?sig=s1g), then token=abc&X-Amz-Signature=def")
    out = redact_text(text)
    for secret in ("deadbeef42", "AKIAEXAMPLE", "hunter2", "t0k", "s1g", "abc", "def"):
        assert secret not in out, secret
    assert "https://bucket.s3.amazonaws.com/m.tar.gz?REDACTED" in out and "http://***@h/x.tgz?REDACTED" in out
    assert redact_text("no secrets: s3://b/k and 3 files") == "no secrets: s3://b/k and 3 files"


def test_fetch_errors_are_redacted_when_made() -> None:
    err = FetchError(f"cannot fetch {SIGNED}")
    assert "deadbeef42" not in err.line() and "?REDACTED" in err.line()


def test_presigned_uri_from_the_environment_is_used_but_never_shown(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    store.put("/m.tar.gz", tar_bytes(saved_model()))
    full = f"{store.base}/m.tar.gz?X-Amz-Signature=deadbeef42&token=t0k"
    log = tmp_path / "termination-log"
    monkeypatch.setenv("PINSERVE_TERMINATION_LOG", str(log))
    monkeypatch.setenv("PINSERVE_MODEL_URI", full)
    dest = tmp_path / "m" / "1"
    assert main(["--uri", redact_uri(full), "--dest", str(dest)]) == 0
    (seen,) = store.requests("/m.tar.gz")
    assert "X-Amz-Signature=deadbeef42" in seen.path  # the real query reached the server
    out = capsys.readouterr()
    record = (dest.parent / ".1.pinserve-fetch.json").read_text()
    for text in (out.out, out.err, record):
        assert "deadbeef42" not in text and "t0k" not in text
    assert "uri_sha256" in record  # another signature is another URI: no reuse on its strength
    monkeypatch.setenv("PINSERVE_MODEL_URI", full.replace("deadbeef42", "cafe"))
    assert main(["--uri", redact_uri(full), "--dest", str(dest)]) == 0
    assert len(store.requests("/m.tar.gz")) == 2
    assert main(["--uri", redact_uri(full), "--dest", str(dest)]) == 0  # the same one again: reused
    assert len(store.requests("/m.tar.gz")) == 2
    capsys.readouterr()
    # Given in --uri itself (no environment), a failure is still redacted everywhere.
    monkeypatch.delenv("PINSERVE_MODEL_URI")
    assert main(["--uri", f"{store.base}/gone.tar.gz?sig=s1gn4ture", "--dest", str(dest), "--retries", "0"]) == 10
    out = capsys.readouterr()
    assert log.read_text().startswith("NotFound: ") and "?REDACTED" in log.read_text()
    assert "s1gn4ture" not in log.read_text() + out.err + out.out
    with pytest.raises(NotFoundError) as err:
        fetch(f"{store.base}/gone.tar.gz?sig=s1gn4ture", tmp_path / "x" / "1", retries=0)
    assert "s1gn4ture" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# sizes


def test_parse_size() -> None:
    assert parse_size("34359738368") == 32 << 30 == parse_size("32Gi")
    assert parse_size("500M") == 500_000_000 and parse_size("1ki") == 1024
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_content_length_over_the_limit_is_refused_before_writing(store: Store, tmp_path: Path) -> None:
    uri = store.put("/big.tar.gz", b"x" * 5000)
    with pytest.raises(TooLargeError, match=r"download of .*/big.tar.gz is larger than the limit of 3.906 KiB "
                                            r"\(4000 bytes; --max-download-bytes, the operator's "
                                            r"PINSERVE_FETCH_MAX_DOWNLOAD\): its Content-Length is") as err:
        fetch(uri, tmp_path / "b" / "1", limits=Limits(max_download=4000))
    assert err.value.exit_code == 24 and err.value.reason == "TooLarge"
    assert len(store.requests("/big.tar.gz")) == 1  # not retried
    assert not list((tmp_path / "b").glob(".1.fetch-*"))  # nothing left behind


@contextlib.contextmanager
def raw_server(serve: Callable[[socket.socket], None]) -> Iterator[str]:
    """An HTTP/1.0 server that answers each connection with ``serve`` (no Content-Length unless it sends one)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.recv(65536)
                serve(conn)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def endless(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/gzip\r\n\r\n")
    block = b"\0" * 65536
    for _ in range(4096):  # 256 MiB at most, should the limit fail
        conn.sendall(block)


def test_endless_body_without_content_length_stops_at_the_limit(tmp_path: Path) -> None:
    with raw_server(endless) as base, pytest.raises(TooLargeError, match=r"stopped after \d+ bytes"):
        fetch(base + "/m.tar.gz", tmp_path / "e" / "1", retries=0, limits=Limits(max_download=1 << 20))
    assert not list((tmp_path / "e").glob(".1.fetch-*"))


def test_tar_bomb_is_stopped_at_the_unpacked_limit(store: Store, tmp_path: Path) -> None:
    files = {**saved_model(), "variables/huge.bin": b"\0" * (4 << 20)}  # 4 MiB of zeros: a few KiB gzipped
    uri = store.put("/bomb.tar.gz", tar_bytes(files))
    with pytest.raises(TooLargeError, match=r"unpacked archive .*bomb.tar.gz.*--max-unpacked-bytes.*huge.bin"):
        fetch(uri, tmp_path / "t" / "1", limits=Limits(max_unpacked=1 << 20))
    fetch(uri, tmp_path / "t" / "1", limits=Limits(max_unpacked=8 << 20))  # under the limit: fine


def test_zip_bomb_is_stopped_at_the_unpacked_limit(store: Store, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("saved_model.pb", b"pb")
        zf.writestr("variables/huge.bin", b"\0" * (4 << 20))
    uri = store.put("/bomb.zip", buf.getvalue())
    with pytest.raises(TooLargeError, match=r"unpacked archive .*--max-unpacked-bytes.*huge.bin"):
        fetch(uri, tmp_path / "z" / "1", limits=Limits(max_unpacked=1 << 20))


def test_zip_member_lying_about_its_size_is_counted_as_written(store: Store, tmp_path: Path) -> None:
    from pinserve.fetch.archive import _copy_counted  # noqa: PLC0415
    from pinserve.fetch.limits import Budget  # noqa: PLC0415

    budget = Budget(1000, "the unpacked archive x", "--max-unpacked-bytes", "PINSERVE_FETCH_MAX_UNPACKED")
    with pytest.raises(TooLargeError, match="stopped after"):
        _copy_counted(io.BytesIO(b"a" * 5000), io.BytesIO(), budget)


def test_sparse_tar_member_is_refused(store: Store, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("saved_model.pb")
        info.type = tarfile.GNUTYPE_SPARSE
        tar.addfile(info)
    uri = store.put("/sparse.tar", buf.getvalue())
    with pytest.raises(UnsafeArchiveError, match="sparse"):
        fetch(uri, tmp_path / "s" / "1")


# ---------------------------------------------------------------------------------------------
# time


def trickle(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 1000000\r\n\r\n")
    for _ in range(600):  # a byte every 50 ms: never a stall, never done
        conn.sendall(b"\0")
        time.sleep(0.05)


def stall(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 1000\r\n\r\nabc")
    time.sleep(5)


def test_trickling_server_hits_the_deadline(tmp_path: Path) -> None:
    # The trickle would take 30 s and never stalls: only the overall deadline can end this fetch, and
    # the message says it was that deadline (no wall-clock bound here: a loaded machine could reach one).
    with raw_server(trickle) as base, pytest.raises(FetchTimeoutError, match=r"deadline of 1s.*--deadline-seconds"):
        fetch(base + "/m.tar.gz", tmp_path / "d" / "1", timeout=0.5, limits=Limits(deadline=1.0))


def test_stalled_server_hits_the_stall_timeout(tmp_path: Path) -> None:
    with raw_server(stall) as base, pytest.raises(FetchTimeoutError, match=r"stalled: no byte for 1s after 3 bytes"):
        fetch(base + "/m.tar.gz", tmp_path / "s" / "1", timeout=1.0, retries=0)


def test_main_takes_the_limits_as_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setenv("PINSERVE_TERMINATION_LOG", str(log))
    with raw_server(trickle) as base:
        code = main(["--uri", base + "/m.tar.gz", "--dest", str(tmp_path / "m" / "1"), "--deadline-seconds", "0.5",
                     "--stall-seconds", "2", "--max-download-bytes", "2Mi", "--max-unpacked-bytes", "4Mi"])
    assert code == 13 and log.read_text().startswith("Timeout: the deadline of 0.5s")
    with raw_server(endless) as base:
        code = main(["--uri", base + "/m.tar.gz", "--dest", str(tmp_path / "m" / "1"), "--max-download-bytes", "1Mi"])
    assert code == 24 and "1 MiB (1048576 bytes; --max-download-bytes" in log.read_text()
    assert main(["--uri", "http://h/m.tgz", "--dest", str(tmp_path / "m" / "1"), "--deadline-seconds", "0"]) == 3


OBJECT_HEADERS = b"Last-Modified: Tue, 01 Dec 2026 00:00:00 GMT\r\nETag: \"1\"\r\n"


def object_stall(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n" + OBJECT_HEADERS + b"\r\nabc")
    time.sleep(5)


def object_trickle(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n" + OBJECT_HEADERS + b"\r\n")
    for _ in range(200):
        conn.sendall(b"\0")
        time.sleep(0.05)


@pytest.mark.parametrize(("serve", "limits", "match"), [
    (object_stall, Limits(), r"stalled: no byte for 1s"),
    (object_trickle, Limits(deadline=2.0), r"deadline of 2s .*--deadline-seconds"),
])
def test_object_store_stall_and_deadline(tmp_path: Path, serve: Callable[[socket.socket], None], limits: Limits,
                                         match: str) -> None:
    # The servers would hold the fetch 5 s (stall, then a short body) or 10 s (trickle): the message names
    # the limit that ended it, so no wall-clock bound is needed.
    with raw_server(serve) as base, pytest.raises(FetchTimeoutError, match=match):
        fetch("gs://b/m.tar.gz", tmp_path / "g" / "1", timeout=1.0, retries=0, limits=limits,
              env={"GCS_ENDPOINT_URL": base, "GOOGLE_SKIP_SIGNATURE": "true"})
