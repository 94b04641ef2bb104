"""Credential refresh: a real exec plugin (a script that counts its runs) and a rotating service-account
token, against a real loopback API server (HTTP, and HTTPS with a CA of its own) that refuses stale tokens.

Both pinserve's own client (KubeApi, through lightkube's auth: the token file re-read and the plugin re-run
on a 401) and kopf's login (pinserve.kubelogin: a fresh token each call, the plugin's expiry) are covered.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from pinserve import kubelogin
from pinserve.handlers import lifecycle
from pinserve.kube import ApiError, Credentials, KubeApi
from pinserve.retry import TRANSPORT

pytestmark = pytest.mark.unit

EXPIRES = "2030-01-01T00:10:00Z"
PLUGIN = """#!{python}
import json, pathlib, sys
counter = pathlib.Path({counter!r})
runs = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(runs))
if {fail!r}:
    sys.exit("the identity provider is down")
status = {{"token": f"token-{{runs}}"}}
if {expires!r}:
    status["expirationTimestamp"] = {expires!r}
print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                  "status": status}}))
"""


def exec_kubeconfig(tmp_path: Path, server: str, *, expires: str | None = EXPIRES, fail: bool = False) -> Path:
    """A kubeconfig whose user is an exec plugin printing token-1, token-2, ... (runs counted in ``runs``)."""
    plugin = tmp_path / "plugin.py"
    plugin.write_text(PLUGIN.format(python=sys.executable, counter=str(tmp_path / "runs"), expires=expires,
                                    fail=fail))
    plugin.chmod(0o755)
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "ml"}}],
        "users": [{"name": "u", "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1", "command": str(plugin), "args": ["--x"]}}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def runs(tmp_path: Path) -> int:
    counter = tmp_path / "runs"
    return int(counter.read_text()) if counter.exists() else 0


@dataclass
class ApiServer:
    """Answers a GET of a ConfigMap for the one valid bearer token, 401 for any other."""

    valid: str = ""
    seen: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        self.seen.append(auth)
        if auth != f"Bearer {self.valid}":
            return web.json_response({"kind": "Status", "code": 401, "reason": "Unauthorized",
                                      "message": "Unauthorized"}, status=401)
        return web.json_response({"kind": "ConfigMap", "metadata": {"name": request.match_info["name"]}})


async def serve(server: ApiServer, ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{ns}/configmaps/{name}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


@pytest.fixture
async def http_server() -> AsyncIterator[tuple[ApiServer, str]]:
    server = ApiServer()
    runner, port = await serve(server)
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA (cryptography comes with the dev dependencies)."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# -- pure ----------------------------------------------------------------------------------------------------

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(("expires", "want"), [
    (NOW + dt.timedelta(minutes=10), NOW + dt.timedelta(minutes=9)),  # a minute early
    (NOW + dt.timedelta(seconds=40), NOW + dt.timedelta(seconds=20)),  # a short token: halfway
    (NOW - dt.timedelta(seconds=5), NOW - dt.timedelta(seconds=5)),  # already expired: now
])
def test_refresh_at(expires: dt.datetime, want: dt.datetime) -> None:
    assert kubelogin.refresh_at(expires, NOW) == want


@pytest.mark.parametrize(("value", "want"), [
    ("2030-01-01T00:10:00Z", NOW + dt.timedelta(minutes=10)),
    ("2030-01-01T01:10:00+01:00", NOW + dt.timedelta(minutes=10)),
    ("2030-01-01T00:10:00", NOW + dt.timedelta(minutes=10)),
    (None, None), ("", None),
])
def test_parse_expiration(value: str | None, want: dt.datetime | None) -> None:
    assert kubelogin.parse_expiration(value) == want


# -- kopf's login --------------------------------------------------------------------------------------------

async def test_login_runs_the_exec_plugin_each_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(exec_kubeconfig(tmp_path, "https://127.0.0.1:6443")))
    first = await lifecycle.login()
    second = await lifecycle.login()
    assert (first.token, second.token, runs(tmp_path)) == ("token-1", "token-2", 2)
    assert (first.server, first.scheme, first.default_namespace) == ("https://127.0.0.1:6443", "Bearer", "ml")
    # kopf logs in again a minute before the plugin's token expires.
    assert first.expiration == dt.datetime(2030, 1, 1, 0, 9, tzinfo=dt.UTC)


async def test_login_without_an_expiry(tmp_path: Path) -> None:
    config = Credentials.from_kubeconfig(str(exec_kubeconfig(tmp_path, "https://h:1", expires=None))).config
    info = await kubelogin.connection_info(config)
    assert (info.token, info.expiration) == ("token-1", None)


async def test_login_from_a_kubeconfig_with_certificates(tmp_path: Path) -> None:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://h:1", "certificate-authority": "ca.crt"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"client-certificate-data": "Q0VSVA==", "client-key": "/k/key.pem"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    info = await kubelogin.connection_info(Credentials.from_kubeconfig(str(path)).config)
    assert (info.ca_path, info.certificate_data, info.private_key_path) == (
        str(tmp_path / "ca.crt"), "Q0VSVA==", "/k/key.pem")
    assert (info.token, info.scheme, info.default_namespace, info.expiration) == (None, None, None, None)


async def test_login_in_cluster_reads_the_token_file_now(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-1\n")
    (tmp_path / "namespace").write_text("pinserve")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "6443"}
    config = Credentials.from_environment(env, sa_dir=tmp_path).config
    first = await kubelogin.connection_info(config)
    (tmp_path / "token").write_text("sa-2")  # kubelet rotated it
    second = await kubelogin.connection_info(config)
    assert (first.server, first.ca_path, first.default_namespace) == (
        "https://10.96.0.1:6443", str(tmp_path / "ca.crt"), "pinserve")
    assert (first.token, second.token) == ("sa-1", "sa-2")


# -- pinserve's own calls ------------------------------------------------------------------------------------

async def test_a_401_runs_the_exec_plugin_again(tmp_path: Path, http_server: tuple[ApiServer, str]) -> None:
    server, url = http_server
    api = KubeApi(Credentials.from_kubeconfig(str(exec_kubeconfig(tmp_path, url))))
    try:
        server.valid = "token-1"
        assert await api.get("ConfigMap", "ml", "a") == {"kind": "ConfigMap", "metadata": {"name": "a"}}
        assert await api.get("ConfigMap", "ml", "b") is not None  # the cached token: the plugin not run
        assert runs(tmp_path) == 1
        server.valid = "token-2"  # token-1 expired
        assert await api.get("ConfigMap", "ml", "c") is not None
    finally:
        await api.close()
    assert runs(tmp_path) == 2
    assert server.seen == ["Bearer token-1"] * 3 + ["Bearer token-2"]
    assert api.requests["GET"] == 3  # one try each, as pinserve counts them


async def test_a_failing_exec_plugin_is_an_api_error(tmp_path: Path, http_server: tuple[ApiServer, str]) -> None:
    _, url = http_server
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    api = KubeApi(Credentials.from_kubeconfig(str(exec_kubeconfig(tmp_path, url, fail=True))), sleep=record,
                  rand=lambda: 0.0)
    try:
        with pytest.raises(ApiError) as caught:
            await api.get("ConfigMap", "ml", "a")
    finally:
        await api.close()
    assert (caught.value.status, caught.value.reason, caught.value.attempts) == (TRANSPORT, "CredentialsError", 4)
    assert "the identity provider is down" in caught.value.message and runs(tmp_path) == 4


async def test_in_cluster_the_rotated_token_file_is_read_again_on_401(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "ca.crt").write_bytes(cert.read_bytes())
    (sa / "token").write_text("sa-1")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    server = ApiServer(valid="sa-1")
    runner, port = await serve(server, tls)
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)}
    api = KubeApi(Credentials.from_environment(env, sa_dir=sa))
    try:
        assert api.credentials.server == f"https://127.0.0.1:{port}"
        assert await api.get("ConfigMap", "ml", "a") is not None
        (sa / "token").write_text("sa-2\n")  # kubelet rotated it; the old one is refused from now on
        server.valid = "sa-2"
        assert await api.get("ConfigMap", "ml", "b") is not None
    finally:
        await api.close()
        await runner.cleanup()
    assert server.seen == ["Bearer sa-1", "Bearer sa-1", "Bearer sa-2"]


def test_without_a_service_account_the_kubeconfig_is_used(tmp_path: Path) -> None:
    path = exec_kubeconfig(tmp_path, "https://h:1")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBECONFIG": f"{tmp_path / 'none'}:{path}"}
    credentials = Credentials.from_environment(env, sa_dir=tmp_path / "no-sa")
    assert (credentials.server, credentials.config.context_name, credentials.config.namespace) == (
        "https://h:1", "c", "ml")
