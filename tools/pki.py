"""The control plane's keys, certificates and kubeconfigs."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import yaml

from tools.kubeutil import ClusterError


def generate_rsa_key_pair(private_path: Path, public_path: Path) -> None:
    """The service-account signing key pair (PEM); the `cryptography` package if present, else openssl."""
    try:
        from cryptography.hazmat.primitives import (  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
            serialization,
        )
        from cryptography.hazmat.primitives.asymmetric import (  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
            rsa,
        )
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise ClusterError(
                "need openssl or the Python `cryptography` package to make the service-account key"
            ) from None
        subprocess.run([openssl, "genrsa", "-out", str(private_path), "2048"], check=True, capture_output=True)
        subprocess.run(
            [openssl, "rsa", "-in", str(private_path), "-pubout", "-out", str(public_path)],
            check=True,
            capture_output=True,
        )
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        public_path.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    private_path.chmod(0o600)


def last_pem_certificate(bundle: str) -> str:
    """The last certificate of a PEM bundle: the CA that kube-apiserver appends to its self-signed cert."""
    marker = "-----BEGIN CERTIFICATE-----"
    parts = [marker + p for p in bundle.split(marker)[1:]]
    if not parts:
        raise ClusterError("the API server's certificate file holds no PEM certificate")
    return parts[-1].strip() + "\n"


def write_kubeconfig(path: Path, *, server: str, ca_pem: str, user: str, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "pinserve-local",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem.encode()).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "pinserve-local", "context": {"cluster": "pinserve-local", "user": user}}],
        "current-context": "pinserve-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


def make_kubelet_client_pki(pki_dir: Path) -> tuple[Path, Path, Path]:
    """A CA the real node's kubelet trusts, and the API server's client certificate signed by it.

    The kubelet (tools/node) accepts only this CA's certificates on its loopback port, which is how
    `kubectl logs/exec` reach it. Returns (ca.crt, client.crt, client.key). ECDSA P-256: instant.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ClusterError("need openssl to make the kubelet client certificate")
    ca_key, ca_crt = pki_dir / "kubelet-ca.key", pki_dir / "kubelet-ca.crt"
    key, csr, crt = (pki_dir / f"apiserver-kubelet-client.{ext}" for ext in ("key", "csr", "crt"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_crt), "-days", "3650",
        "-subj", "/CN=pinserve-kubelet-client-ca")
    run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj",
        "/O=system:masters/CN=kube-apiserver-kubelet-client")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(crt), "-days", "3650")
    for private in (ca_key, key):
        private.chmod(0o600)
    return ca_crt, crt, key
