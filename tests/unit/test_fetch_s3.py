"""`pinserve fetch-model --uri s3://…` through obstore against a real S3-compatible server on loopback:
moto's server mode, started here on 127.0.0.1 (with its IAM checks on, so a wrong secret is refused)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

boto3 = pytest.importorskip("boto3", reason="moto[server] (the dev extra) brings boto3")
pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")

BUCKET = "models"
KEY = "rfcn/model v1.tar.gz"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in {"export/saved_model.pb": b"\x08\x01 saved model", "export/variables/variables.index": b"i",
                           "export/variables/variables.data-00000-of-00001": os.urandom(2048)}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """moto on 127.0.0.1:<free port>, a bucket with the archive, and an IAM user's key that may read it."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # IAM enforcement after the first few calls (user, key, policy); every later request must be signed by a
    # key that IAM knows, with a policy that allows it.
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "5", "MOTO_PORT": str(port)}
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(var, None)
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        admin: dict[str, Any] = {"endpoint_url": endpoint, "region_name": "us-east-1",
                                 "aws_access_key_id": "admin", "aws_secret_access_key": "admin"}
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="fetcher")  # 1
        key = iam.create_access_key(UserName="fetcher")["AccessKey"]  # 2
        iam.put_user_policy(UserName="fetcher", PolicyName="all", PolicyDocument=(  # 3
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'))
        s3c = boto3.client("s3", **admin)
        s3c.create_bucket(Bucket=BUCKET)  # 4
        s3c.put_object(Bucket=BUCKET, Key=KEY, Body=_archive())  # 5
        yield {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
               "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"], "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"}
    finally:
        server.terminate()
        server.wait(timeout=10)


def run(env: dict[str, str], tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_")) and "proxy" not in k.lower()}
    log = tmp_path / "termination-log"
    return subprocess.run(
        [sys.executable, "-m", "pinserve", "fetch-model", "--retries", "0", "--timeout", "10", *args],
        env={**base, **env, "PINSERVE_TERMINATION_LOG": str(log)}, capture_output=True, text=True, timeout=120,
        check=False)


def test_fetches_a_saved_model_from_a_real_s3_server(s3: dict[str, str], tmp_path: Path) -> None:
    dest = tmp_path / "models" / "rfcn" / "1"
    done = run(s3, tmp_path, "--uri", f"s3://{BUCKET}/{KEY}", "--path", "export", "--dest", str(dest))
    assert done.returncode == 0, done.stderr
    assert (dest / "saved_model.pb").read_bytes() == b"\x08\x01 saved model"
    assert (dest / "variables" / "variables.index").read_bytes() == b"i"
    assert "access key" in done.stderr and s3["AWS_SECRET_ACCESS_KEY"] not in done.stderr + done.stdout


def test_download_limit_applies_to_s3(s3: dict[str, str], tmp_path: Path) -> None:
    done = run(s3, tmp_path, "--uri", f"s3://{BUCKET}/{KEY}", "--dest", str(tmp_path / "m" / "1"),
               "--max-download-bytes", "100")
    assert done.returncode == 24, done.stderr
    said = (tmp_path / "termination-log").read_text()
    assert said.startswith("TooLarge: ") and "--max-download-bytes" in said and "100 bytes" in said


def test_missing_object_names_bucket_and_key(s3: dict[str, str], tmp_path: Path) -> None:
    done = run(s3, tmp_path, "--uri", f"s3://{BUCKET}/rfcn/nope.tar.gz", "--dest", str(tmp_path / "m" / "1"))
    assert done.returncode == 10, done.stderr
    said = (tmp_path / "termination-log").read_text()
    assert said.startswith("NotFound: ") and "bucket 'models', key 'rfcn/nope.tar.gz'" in said


def test_wrong_secret_is_forbidden_and_never_shown(s3: dict[str, str], tmp_path: Path) -> None:
    wrong = {**s3, "AWS_SECRET_ACCESS_KEY": SECRET}
    done = run(wrong, tmp_path, "--uri", f"s3://{BUCKET}/{KEY}", "--dest", str(tmp_path / "m" / "1"))
    assert done.returncode == 11, done.stderr
    said = (tmp_path / "termination-log").read_text()
    assert said.startswith("Forbidden: ") and f"bucket 'models', key '{KEY}'" in said
    assert "credentialsSecret" in said
    for text in (said, done.stderr, done.stdout):
        assert SECRET not in text and s3["AWS_SECRET_ACCESS_KEY"] not in text
