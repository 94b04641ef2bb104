"""Model URIs to HTTP(S) requests: http/https as given, gs:// via the GCS XML API, s3:// signed
with SigV4 (AWS or an S3-compatible store such as MinIO). Credentials come from the environment,
which the init container fills from the ModelServer's ``credentialsSecret``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from pinserve.fetch.errors import InvalidArgumentError
from pinserve.fetch.sigv4 import sign_request

GCS_ENDPOINT = "https://storage.googleapis.com"
# Endpoint overrides, first set wins. STORAGE_EMULATOR_HOST is what Google's own clients read.
GCS_ENDPOINT_VARS = ("GCS_ENDPOINT_URL", "STORAGE_EMULATOR_HOST")
GCS_TOKEN_VARS = ("GCS_TOKEN", "GOOGLE_OAUTH_ACCESS_TOKEN")
S3_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_S3_ENDPOINT")
S3_REGION_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class Source:
    """Where to GET the model from and how to authenticate (``auth`` is for logs: no secrets)."""

    uri: str
    url: str
    auth: str = "anonymous"
    signer: Callable[[], dict[str, str]] | None = None

    def auth_headers(self) -> dict[str, str]:
        """Fresh per attempt (a SigV4 signature carries its time)."""
        return self.signer() if self.signer else {}


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return name, value
    return None


def _endpoint(value: str, env: Mapping[str, str]) -> str:
    """An endpoint without a scheme ("minio:9000") is https unless S3_USE_HTTPS=0 (TensorFlow's knob)."""
    if "://" not in value:
        scheme = "http" if env.get("S3_USE_HTTPS", "").strip() in ("0", "false") else "https"
        value = f"{scheme}://{value}"
    if not value.startswith(("http://", "https://")):
        raise InvalidArgumentError(f"endpoint {value!r} must be an http:// or https:// URL")
    return value.rstrip("/")


def _bucket_key(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key or key.endswith("/"):
        raise InvalidArgumentError(f"{uri!r} must name one object: {parts.scheme}://<bucket>/<key>")
    if parts.query or parts.fragment:
        raise InvalidArgumentError(f"{uri!r}: query strings and fragments are not part of an object name")
    return bucket, key


def _gcs(uri: str, env: Mapping[str, str]) -> Source:
    bucket, key = _bucket_key(uri)
    override = _first(env, GCS_ENDPOINT_VARS)
    endpoint = _endpoint(override[1], env) if override else GCS_ENDPOINT
    url = f"{endpoint}/{quote(bucket, safe='')}/{quote(key, safe='/-_.~')}"
    token = _first(env, GCS_TOKEN_VARS)
    if token is None:
        return Source(uri, url)
    header = {"Authorization": f"Bearer {token[1]}"}
    return Source(uri, url, f"bearer token from {token[0]}", lambda: dict(header))


def s3_url(bucket: str, key: str, env: Mapping[str, str]) -> tuple[str, str]:
    """(url, region). Path-style on a custom endpoint; virtual-hosted on AWS unless the bucket
    name has dots (they break the wildcard TLS certificate)."""
    region_var = _first(env, S3_REGION_VARS)
    region = region_var[1] if region_var else DEFAULT_REGION
    path = quote(key, safe="/-_.~")
    override = _first(env, S3_ENDPOINT_VARS)
    if override:
        return f"{_endpoint(override[1], env)}/{quote(bucket, safe='')}/{path}", region
    if "." in bucket:
        return f"https://s3.{region}.amazonaws.com/{bucket}/{path}", region
    if region == DEFAULT_REGION:
        return f"https://{bucket}.s3.amazonaws.com/{path}", region
    return f"https://{bucket}.s3.{region}.amazonaws.com/{path}", region


def _s3(uri: str, env: Mapping[str, str]) -> Source:
    bucket, key = _bucket_key(uri)
    url, region = s3_url(bucket, key, env)
    access = env.get("AWS_ACCESS_KEY_ID", "").strip()
    secret = env.get("AWS_SECRET_ACCESS_KEY", "").strip()
    if not access and not secret:
        return Source(uri, url)
    if not (access and secret):
        missing = "AWS_SECRET_ACCESS_KEY" if access else "AWS_ACCESS_KEY_ID"
        raise InvalidArgumentError(f"{missing} is not set but its partner is: the credentials Secret "
                              "needs both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    token = env.get("AWS_SESSION_TOKEN", "").strip() or None

    def signer() -> dict[str, str]:
        return sign_request("GET", url, access_key=access, secret_key=secret, region=region,
                            session_token=token)

    shown = access[:4] + "…" if len(access) > 4 else "…"
    return Source(uri, url, f"AWS SigV4 (key {shown}, region {region})", signer)


def resolve(uri: str, env: Mapping[str, str]) -> Source:
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        if not urlsplit(uri).netloc:
            raise InvalidArgumentError(f"{uri!r} has no host")
        return Source(uri, uri)
    if scheme == "gs":
        return _gcs(uri, env)
    if scheme == "s3":
        return _s3(uri, env)
    raise InvalidArgumentError(f"unsupported URI {uri!r}: use http://, https://, gs:// or s3://")
