"""kopf's login from the configuration pinserve's own client uses (lightkube's, see pinserve.kube).

In a pod: KUBERNETES_SERVICE_HOST/PORT, the service account's CA and its token as the file holds it now
(kopf logs in again on a 401, reading the rotated token). From a kubeconfig: the server, CA, client
certificate, token or basic auth of the current context; an exec plugin (EKS, GKE, ...) is run with
lightkube's ExecAuth preparation (its apiVersion check, args and env), and the credential's
``status.expirationTimestamp`` becomes ``ConnectionInfo.expiration``, so kopf logs in again shortly before
the token expires (and on any 401 before that).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import kopf
from lightkube import ConfigError
from lightkube.config import client_adapter
from lightkube.config.kubeconfig import SingleConfig
from lightkube.config.models import User, UserExec

# Log in again this long before a token expires (at most half of the token's remaining life).
REFRESH_MARGIN = dt.timedelta(seconds=60)


def refresh_at(expires: dt.datetime, now: dt.datetime) -> dt.datetime:
    """When to log in again for a token valid until ``expires``: a margin early, never before ``now``."""
    remaining = max(expires - now, dt.timedelta(0))
    return expires - min(REFRESH_MARGIN, remaining / 2)


def parse_expiration(value: Any) -> dt.datetime | None:
    """An ExecCredential's ``status.expirationTimestamp`` (RFC 3339), timezone-aware; None if absent."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"exec plugin: unreadable expirationTimestamp {value!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


async def exec_credential(spec: UserExec) -> dict[str, Any]:
    """Run a kubeconfig's exec plugin once; its ExecCredential ``status`` (token, certificate, expiry)."""
    # lightkube's ExecAuth re-runs the plugin on a 401 but keeps only the token; kopf needs the expiry
    # too, so the same command and environment are run here and the whole status is read.
    command, env = client_adapter.ExecAuth(spec)._prepare()
    output = await client_adapter.async_check_output(command, env=env)
    try:
        status = json.loads(output)["status"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"exec plugin {spec.command}: no ExecCredential status ({exc})") from None
    if not isinstance(status, dict):
        raise ConfigError(f"exec plugin {spec.command}: status is not an object")
    return status


async def connection_info(config: SingleConfig, now: dt.datetime | None = None) -> kopf.ConnectionInfo:
    """kopf's connection for one lightkube configuration (tokens read and plugins run now)."""
    cluster, user = config.cluster, config.user or User()
    token = user.token
    expiration: dt.datetime | None = None
    cert_data = user.client_cert_data
    key_data = user.client_key_data
    if user.token_file:  # a rotating service-account token: whatever the file holds now
        token = Path(user.token_file).read_text().strip()
    elif user.exec and not token:
        status = await exec_credential(user.exec)
        token = status.get("token") or None
        # A plugin may hand out a client certificate instead (PEM, which kopf takes as it is).
        cert_data = status.get("clientCertificateData") or cert_data
        key_data = status.get("clientKeyData") or key_data
        expires = parse_expiration(status.get("expirationTimestamp"))
        if expires is not None:
            expiration = refresh_at(expires, now or dt.datetime.now(dt.UTC))
    return kopf.ConnectionInfo(
        server=cluster.server,
        ca_path=str(config.abs_file(cluster.certificate_auth)) if cluster.certificate_auth else None,
        ca_data=cluster.certificate_auth_data,
        insecure=cluster.insecure or None,
        username=user.username,
        password=user.password,
        scheme="Bearer" if token else None,
        token=token,
        certificate_path=str(config.abs_file(user.client_cert)) if user.client_cert and not cert_data else None,
        certificate_data=cert_data,
        private_key_path=str(config.abs_file(user.client_key)) if user.client_key and not key_data else None,
        private_key_data=key_data,
        default_namespace=config.context.namespace,
        expiration=expiration,
    )
