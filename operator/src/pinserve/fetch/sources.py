"""Model URIs to what fetches them: http/https with urllib (download.py), gs:// and s3:// with obstore
(objstore.py), which brings the standard credential chains. Credentials come from the environment, which
the init container fills from the ModelServer's ``credentialsSecret`` (or the pod's workload identity).
``Source.url`` and ``Source.auth`` are for messages: they never carry a secret."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

from pinserve.fetch.errors import InvalidArgumentError
from pinserve.redact import redact_uri

GCS_ENDPOINT = "https://storage.googleapis.com"
# Endpoint overrides, first set wins. STORAGE_EMULATOR_HOST is what Google's own clients read.
GCS_ENDPOINT_VARS = ("GCS_ENDPOINT_URL", "STORAGE_EMULATOR_HOST")
GCS_TOKEN_VARS = ("GCS_TOKEN", "GOOGLE_OAUTH_ACCESS_TOKEN")
S3_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_S3_ENDPOINT")
S3_REGION_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")
DEFAULT_REGION = "us-east-1"
TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Source:
    """Where the model comes from and how it authenticates (``url`` and ``auth`` are for logs: no secrets)."""

    uri: str  # as given (may hold a presigned query: never print it, print ``shown``)
    url: str  # redacted
    auth: str = "anonymous"
    scheme: str = "http"
    request_url: str = ""  # http(s): what to GET, userinfo removed
    headers: Mapping[str, str] = field(default_factory=dict)  # http(s): sent only to request_url's host
    bucket: str = ""
    key: str = ""
    endpoint: str = ""  # s3/gs: the custom endpoint, if any
    region: str = ""  # s3
    allow_http: bool = False  # s3/gs: plain-http endpoint allowed
    options: Mapping[str, str] = field(default_factory=dict)  # s3/gs: obstore configuration (may hold secrets)

    @property
    def shown(self) -> str:
        return redact_uri(self.uri)

    @property
    def is_object_store(self) -> bool:
        return self.scheme in ("s3", "gs")


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
    if "@" in bucket:
        raise InvalidArgumentError(f"{redact_uri(uri)!r}: credentials do not belong in an object URI; "
                                   "use spec.model.credentialsSecret")
    if not bucket or not key or key.endswith("/"):
        raise InvalidArgumentError(f"{uri!r} must name one object: {parts.scheme}://<bucket>/<key>")
    if parts.query or parts.fragment:
        raise InvalidArgumentError(f"{redact_uri(uri)!r}: query strings and fragments are not part of an "
                                   "object name")
    return bucket, unquote(key)


def _allow_http(endpoint: str, env: Mapping[str, str]) -> bool:
    """Plain http for an endpoint that says so, or with AWS_ALLOW_HTTP / GOOGLE_ALLOW_HTTP (object_store's knobs)."""
    flags = (env.get("AWS_ALLOW_HTTP", ""), env.get("GOOGLE_ALLOW_HTTP", ""), env.get("ALLOW_HTTP", ""))
    return endpoint.startswith("http://") or any(f.strip().lower() in TRUE for f in flags)


def _gcs(uri: str, env: Mapping[str, str]) -> Source:
    bucket, key = _bucket_key(uri)
    override = _first(env, GCS_ENDPOINT_VARS)
    endpoint = _endpoint(override[1], env) if override else ""
    options: dict[str, str] = {}
    token = _first(env, GCS_TOKEN_VARS)
    if token is not None:
        options["bearer_token"] = token[1]
        auth = f"bearer token from {token[0]}"
    elif env.get("GOOGLE_SKIP_SIGNATURE", "").strip().lower() in TRUE:
        options["skip_signature"] = "true"
        auth = "anonymous (GOOGLE_SKIP_SIGNATURE)"
    else:
        auth = ("the service account key in GOOGLE_SERVICE_ACCOUNT / GOOGLE_APPLICATION_CREDENTIALS"
                if _first(env, ("GOOGLE_SERVICE_ACCOUNT", "GOOGLE_SERVICE_ACCOUNT_PATH", "GOOGLE_SERVICE_ACCOUNT_KEY",
                                "GOOGLE_APPLICATION_CREDENTIALS"))
                else "the default credential chain (workload identity / the metadata server)")
    shown = f"{endpoint or GCS_ENDPOINT}/{bucket}/{key}"
    return Source(uri, shown, auth, "gs", bucket=bucket, key=key, endpoint=endpoint,
                  allow_http=_allow_http(endpoint, env), options=options)


def _s3(uri: str, env: Mapping[str, str]) -> Source:
    bucket, key = _bucket_key(uri)
    region_var = _first(env, S3_REGION_VARS)
    region = region_var[1] if region_var else DEFAULT_REGION
    override = _first(env, S3_ENDPOINT_VARS)
    endpoint = _endpoint(override[1], env) if override else ""
    access = env.get("AWS_ACCESS_KEY_ID", "").strip()
    secret = env.get("AWS_SECRET_ACCESS_KEY", "").strip()
    options: dict[str, str] = {}
    if access or secret:
        if not (access and secret):
            missing = "AWS_SECRET_ACCESS_KEY" if access else "AWS_ACCESS_KEY_ID"
            raise InvalidArgumentError(f"{missing} is not set but its partner is: the credentials Secret "
                                       "needs both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        options.update(access_key_id=access, secret_access_key=secret)
        token = env.get("AWS_SESSION_TOKEN", "").strip()
        if token:
            options["session_token"] = token
        shown_key = access[:4] + "…" if len(access) > 4 else "…"
        auth = f"access key {shown_key}"
    elif env.get("AWS_SKIP_SIGNATURE", "").strip().lower() in TRUE:
        options["skip_signature"] = "true"
        auth = "anonymous (AWS_SKIP_SIGNATURE)"
    elif env.get("AWS_WEB_IDENTITY_TOKEN_FILE", "").strip():
        auth = "web identity (EKS IRSA: AWS_ROLE_ARN with AWS_WEB_IDENTITY_TOKEN_FILE)"
    elif _first(env, ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")):
        auth = "container credentials (EKS Pod Identity / ECS)"
    else:
        auth = "the instance metadata service (no credentials in the environment)"
    where = endpoint or f"https://s3.{region}.amazonaws.com"
    return Source(uri, f"{where}/{bucket}/{key}", f"{auth}, region {region}", "s3", bucket=bucket, key=key,
                  endpoint=endpoint, region=region, allow_http=_allow_http(endpoint, env), options=options)


def _http(uri: str) -> Source:
    parts = urlsplit(uri)
    if not parts.hostname:
        raise InvalidArgumentError(f"{redact_uri(uri)!r} has no host")
    headers: dict[str, str] = {}
    auth = "anonymous"
    netloc = parts.netloc
    if "@" in netloc:  # user:password@host: HTTP basic auth, sent to that host only
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
        auth = "basic auth from the URI"
    elif parts.query:
        auth = "a presigned query string"
    request_url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    return Source(uri, redact_uri(uri), auth, parts.scheme.lower(), request_url=request_url, headers=headers)


def resolve(uri: str, env: Mapping[str, str]) -> Source:
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        return _http(uri)
    if scheme == "gs":
        return _gcs(uri, env)
    if scheme == "s3":
        return _s3(uri, env)
    raise InvalidArgumentError(f"unsupported URI {redact_uri(uri)!r}: use http://, https://, gs:// or s3://")
