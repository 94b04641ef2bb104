"""The fetch init container's limits and the model volume's sizeLimit as rendered, and credentials kept out
of the args, Events and status."""

from __future__ import annotations

from typing import Any

import pytest

from pinserve.reconcile import EventSpec
from pinserve.render.deployment import _model_source, model_volume_size_limit
from pinserve.settings import Settings
from pinserve.status import Condition
from tests.unit.test_render import base_spec, make

pytestmark = pytest.mark.unit

PRESIGNED = "https://bucket.s3.amazonaws.com/rfcn.tar.gz?X-Amz-Signature=deadbeef42&X-Amz-Credential=AKIAX"


def fetch_container(uri: str, settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    ms = make(base_spec(model={"uri": uri, "path": "rfcn/saved_model", "credentialsSecret": "s3-creds"}))
    (init,), volume = _model_source(ms, settings)
    return init, volume["volume"]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_limits_are_passed_and_the_volume_is_bounded() -> None:
    init, volume = fetch_container("s3://bucket/rfcn.tar.gz", Settings())
    assert flag(init["args"], "--max-download-bytes") == str(32 << 30)
    assert flag(init["args"], "--max-unpacked-bytes") == str(64 << 30)
    assert flag(init["args"], "--deadline-seconds") == "3600"
    assert volume["emptyDir"] == {"sizeLimit": "97Gi"}  # archive + tree + 1Gi
    assert "env" not in init  # nothing secret to carry: the Secret's envFrom alone

    settings = Settings.from_env({"PINSERVE_FETCH_MAX_DOWNLOAD": "2Gi", "PINSERVE_FETCH_MAX_UNPACKED": "3000000000",
                                  "PINSERVE_FETCH_DEADLINE_SECONDS": "600"})
    init, volume = fetch_container("s3://bucket/rfcn.tar.gz", settings)
    assert flag(init["args"], "--max-download-bytes") == str(2 << 30)
    assert flag(init["args"], "--max-unpacked-bytes") == "3000000000"
    assert flag(init["args"], "--deadline-seconds") == "600"
    assert volume["emptyDir"]["sizeLimit"] == str((2 << 30) + 3000000000 + (1 << 30))
    fixed = Settings.from_env({"PINSERVE_MODEL_VOLUME_SIZE_LIMIT": "20Gi"})
    assert model_volume_size_limit(fixed) == "20Gi"
    for bad in ({"PINSERVE_FETCH_MAX_DOWNLOAD": "lots"}, {"PINSERVE_FETCH_DEADLINE_SECONDS": "0"},
                {"PINSERVE_MODEL_VOLUME_SIZE_LIMIT": "big"}):
        with pytest.raises(ValueError, match="environment variable"):
            Settings.from_env(bad)


def test_presigned_uri_goes_to_the_env_never_to_the_args() -> None:
    init, _ = fetch_container(PRESIGNED, Settings())
    assert flag(init["args"], "--uri") == "https://bucket.s3.amazonaws.com/rfcn.tar.gz?REDACTED"
    assert "deadbeef42" not in " ".join(init["args"])
    assert init["env"] == [{"name": "PINSERVE_MODEL_URI", "value": PRESIGNED}]
    assert init["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]


def test_events_and_conditions_never_carry_the_query_string() -> None:
    said = f"pod rfcn-1: init container fetch-model failed: NotFound: {PRESIGNED}: HTTP 404"
    for message in (EventSpec("Warning", "FetchFailed", said).message,
                    Condition("Ready", "False", "FetchFailed", said).message):
        assert "deadbeef42" not in message and "AKIAX" not in message
        assert "https://bucket.s3.amazonaws.com/rfcn.tar.gz?REDACTED" in message
