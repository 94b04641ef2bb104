"""AWS Signature Version 4 for header-authenticated requests (what S3 and MinIO accept).

Only what a GET of one object needs: canonical request, string to sign, the HMAC key chain and
the ``Authorization`` header. The payload hash defaults to ``UNSIGNED-PAYLOAD`` (S3 allows it for
any request; a GET has no body anyway).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def uri_encode(text: str, *, keep_slash: bool) -> str:
    """RFC 3986 encoding as SigV4 wants it: only A-Z a-z 0-9 - _ . ~ stay (and '/' in paths)."""
    return quote(text, safe="-_.~/" if keep_slash else "-_.~")


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """kSigning = HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date), region), service), "aws4_request")."""
    k_date = _hmac(("AWS4" + secret_key).encode("utf-8"), date)
    k_region = _hmac(k_date, region)
    k_service = _hmac(k_region, service)
    return _hmac(k_service, "aws4_request")


def canonical_query(query: str) -> str:
    pairs = [(uri_encode(k, keep_slash=False), uri_encode(v, keep_slash=False))
             for k, v in parse_qsl(query, keep_blank_values=True)]
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def canonical_request(
    method: str, path: str, query: str, headers: Mapping[str, str], payload_hash: str
) -> tuple[str, str]:
    """(canonical request, signed headers). ``path`` is already URI-encoded (S3: not normalised,
    not encoded twice); every header given is signed."""
    canon = {name.strip().lower(): " ".join(value.split()) for name, value in headers.items()}
    names = sorted(canon)
    signed = ";".join(names)
    lines = [
        method.upper(),
        path or "/",
        canonical_query(query),
        "".join(f"{name}:{canon[name]}\n" for name in names),
        signed,
        payload_hash,
    ]
    return "\n".join(lines), signed


def string_to_sign(amz_date: str, scope: str, creq: str) -> str:
    return "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(creq.encode("utf-8")).hexdigest()])


def sign_request(
    method: str,
    url: str,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    service: str = "s3",
    session_token: str | None = None,
    headers: Mapping[str, str] | None = None,
    payload_hash: str = UNSIGNED_PAYLOAD,
    now: datetime | None = None,
) -> dict[str, str]:
    """The headers to send (besides Host, which must equal the URL's netloc): the given ones plus
    x-amz-date, x-amz-content-sha256, x-amz-security-token (with a session token) and Authorization."""
    when = (now or datetime.now(UTC)).astimezone(UTC)
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    parts = urlsplit(url)
    out = dict(headers or {})
    out["x-amz-date"] = amz_date
    out["x-amz-content-sha256"] = payload_hash
    if session_token:
        out["x-amz-security-token"] = session_token
    creq, signed = canonical_request(method, parts.path, parts.query, {"host": parts.netloc, **out},
                                     payload_hash)
    scope = f"{date}/{region}/{service}/aws4_request"
    signature = hmac.new(signing_key(secret_key, date, region, service),
                         string_to_sign(amz_date, scope, creq).encode("utf-8"), hashlib.sha256).hexdigest()
    out["Authorization"] = (f"{ALGORITHM} Credential={access_key}/{scope}, "
                            f"SignedHeaders={signed}, Signature={signature}")
    return out
