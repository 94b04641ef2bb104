"""Keep credentials out of what pinserve prints: args, logs, Events, status and termination messages.

A model URI may carry a presigned query string (X-Amz-Signature=…, X-Goog-Signature=…, an Azure ``sig=``,
a ``token=``) or userinfo (``https://user:password@host/…``). ``redact_uri`` drops both from one URI;
``redact_text`` does it to every URL inside a free-form message, and to ``name=value`` pairs whose name
says secret even outside a URL.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "REDACTED"
# scheme://[userinfo@]rest, up to whitespace or a quote/bracket that ends a URL in prose or repr().
_URL = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*)://([^\s'\"<>()\[\]{}]+)")
_SECRET_PAIR = re.compile(
    r"(?i)\b(x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential|"
    r"googleaccessid|signature|sig|token|access_token|password|secret|apikey|api_key)=([^&\s'\"]+)")


def has_secret_part(uri: str) -> bool:
    """True when ``uri`` carries a query string, a fragment or userinfo."""
    parts = urlsplit(uri)
    return bool(parts.query or parts.fragment or "@" in parts.netloc)


def redact_uri(uri: str) -> str:
    """``uri`` without its userinfo (``***@``) and with its query string and fragment replaced by REDACTED."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return _URL.sub(lambda m: f"{m.group(1)}://{REDACTED}", uri)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = REDACTED if parts.query else ""
    fragment = REDACTED if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_text(text: str) -> str:
    """Every URL in ``text`` through ``redact_uri``; secret-looking ``name=value`` pairs elsewhere masked."""
    out = _URL.sub(lambda m: redact_uri(m.group(0)), text)
    return _SECRET_PAIR.sub(lambda m: f"{m.group(1)}={REDACTED}", out)
