"""Reading the kubelet's cpu_manager_state: every shape a node can have, and every way it can be wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pinserve.agent import cpumanager
from pinserve.agent.cpumanager import (
    POLICY_NONE,
    POLICY_STATIC,
    POLICY_UNKNOWN,
    CpuManagerState,
    file_signature,
    parse_state,
    read_state,
)

pytestmark = pytest.mark.unit

# As a 1.34 kubelet with --cpu-manager-policy=static writes it (one line, no trailing newline).
STATIC = (
    '{"policyName":"static","defaultCpuSet":"0-1,6-17,22-31","entries":{'
    '"3f1c1e2a-1111-4c1b-9a55-0b8f7d4f6a11":{"server":"2-5,18-21","model-fetch":"0,16"},'
    '"8d2e0c6b-2222-4f0e-8c1e-5e0b1d2c3a44":{"server":"8-9,24-25"}},"checksum":1552716370}'
)
NONE = '{"policyName":"none","defaultCpuSet":"","checksum":3242152201}'


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "cpu_manager_state"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_static_policy_with_entries(tmp_path: Path) -> None:
    state = read_state(write(tmp_path, STATIC))
    assert state.policy == POLICY_STATIC and state.known
    assert state.reason is None
    assert state.default_cpus == frozenset({0, 1, *range(6, 18), *range(22, 32)})
    assert state.checksum == 1552716370
    assert state.container_cpus("3f1c1e2a-1111-4c1b-9a55-0b8f7d4f6a11", "server") == frozenset(
        {2, 3, 4, 5, 18, 19, 20, 21}
    )
    assert state.container_cpus("8d2e0c6b-2222-4f0e-8c1e-5e0b1d2c3a44", "server") == frozenset({8, 9, 24, 25})
    # Other containers of the pod, unknown pods and unknown containers.
    assert state.container_cpus("3f1c1e2a-1111-4c1b-9a55-0b8f7d4f6a11", "model-fetch") == frozenset({0, 16})
    assert state.container_cpus("nope", "server") is None
    assert state.container_cpus("8d2e0c6b-2222-4f0e-8c1e-5e0b1d2c3a44", "sidecar") is None
    assert state.summary() == {"policy": "static", "defaultCpuSet": "0-1,6-17,22-31", "source": "checkpoint"}
    assert state.path.endswith("cpu_manager_state")


def test_static_policy_without_entries() -> None:
    state = parse_state('{"policyName":"static","defaultCpuSet":"0-7","checksum":1}')
    assert state.policy == POLICY_STATIC
    assert state.entries == {}
    assert state.default_cpus == frozenset(range(8))


def test_none_policy(tmp_path: Path) -> None:
    state = read_state(write(tmp_path, NONE))
    assert state.policy == POLICY_NONE and state.known
    assert state.default_cpus == frozenset()
    assert state.reason is None
    assert state.summary() == {"policy": "none", "defaultCpuSet": "", "source": "checkpoint"}


def test_checkpoint_v1_entries_by_container_id() -> None:
    state = parse_state('{"policyName":"static","defaultCpuSet":"0,3","entries":{"abc123":"1-2"},"checksum":7}')
    assert state.legacy_entries == {"abc123": frozenset({1, 2})}
    assert state.container_cpus("some-uid", "server", "containerd://abc123") == frozenset({1, 2})
    assert state.container_cpus("some-uid", "server", "containerd://other") is None


def test_missing_file(tmp_path: Path) -> None:
    state = read_state(tmp_path / "absent")
    assert state.policy == POLICY_UNKNOWN and not state.known
    assert state.reason is not None and "does not exist" in state.reason
    assert state.default_cpus is None
    assert state.summary() == {"policy": "unknown", "source": "checkpoint", "reason": state.reason}


def test_directory_instead_of_file(tmp_path: Path) -> None:
    state = read_state(tmp_path)
    assert state.policy == POLICY_UNKNOWN
    assert state.reason is not None and "directory" in state.reason


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, STATIC)

    def denied(*args: Any, **kwargs: Any) -> Any:
        # What a non-root agent meets in /var/lib/kubelet (mode 0700 on most nodes); chmod would not stop root.
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cpumanager, "open", denied, raising=False)
    state = read_state(path)
    assert state.policy == POLICY_UNKNOWN
    assert state.reason is not None and "cannot read" in state.reason


@pytest.mark.parametrize("text", ["", "\n", "   \x00\x00"], ids=["empty", "newline", "nul-padded"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    state = read_state(write(tmp_path, text))
    assert state.policy == POLICY_UNKNOWN
    assert state.reason is not None and "empty" in state.reason


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "not JSON"),
        (STATIC[: len(STATIC) // 2], "not JSON"),  # torn write
        ('["static"]', "not a JSON object"),
        ('"static"', "not a JSON object"),
        ("{}", "no policyName"),
        ('{"policyName": 3}', "no policyName"),
        ('{"policyName":"dynamic","defaultCpuSet":""}', "unrecognised CPU manager policy 'dynamic'"),
    ],
    ids=["garbage", "truncated", "array", "string", "no-policy", "policy-not-string", "unknown-policy"],
)
def test_garbage(tmp_path: Path, text: str, says: str) -> None:
    state = read_state(write(tmp_path, text))
    assert state.policy == POLICY_UNKNOWN
    assert state.reason is not None and says in state.reason
    assert state.entries == {} and state.default_cpus is None


def test_binary_garbage(tmp_path: Path) -> None:
    state = read_state(write(tmp_path, bytes(range(256))))
    assert state.policy == POLICY_UNKNOWN
    assert state.reason is not None and "not JSON" in state.reason


def test_oversized_file(tmp_path: Path) -> None:
    state = read_state(write(tmp_path, " " * (5 << 20)))
    assert state.policy == POLICY_UNKNOWN
    assert state.reason is not None and "larger than" in state.reason


def test_policy_name_is_case_insensitive() -> None:
    assert parse_state('{"policyName":"Static","defaultCpuSet":"0"}').policy == POLICY_STATIC


def test_bad_parts_are_skipped_and_said() -> None:
    text = json.dumps(
        {
            "policyName": "static",
            "defaultCpuSet": "0-1",
            "entries": {"good": {"server": "2-3"}, "bad": {"server": "9-2", "other": 5}},
            "checksum": "x",
        }
    )
    state = parse_state(text, "/s")
    assert state.policy == POLICY_STATIC
    assert state.container_cpus("good", "server") == frozenset({2, 3})
    assert state.container_cpus("bad", "server") is None
    assert state.checksum is None
    assert state.reason is not None
    assert "entries[bad][server]" in state.reason and "entries[bad][other]" in state.reason
    assert state.summary()["reason"] == state.reason


def test_bad_default_set_leaves_the_policy_known() -> None:
    state = parse_state('{"policyName":"static","defaultCpuSet":"zero","entries":"nope"}')
    assert state.policy == POLICY_STATIC
    assert state.default_cpus is None
    assert state.reason is not None and "defaultCpuSet" in state.reason and "entries is not an object" in state.reason
    assert "defaultCpuSet" not in state.summary()


def test_states_compare_by_content() -> None:
    assert parse_state(STATIC) == parse_state(STATIC)
    assert parse_state(STATIC) != parse_state(STATIC.replace("2-5,18-21", "2-5"))
    assert isinstance(parse_state(NONE), CpuManagerState)


def test_file_signature_changes_on_replace(tmp_path: Path) -> None:
    path = write(tmp_path, STATIC)
    first = file_signature(path)
    assert first is not None
    assert file_signature(path) == first
    # The kubelet writes a temporary file and renames it over the checkpoint.
    tmp = tmp_path / "cpu_manager_state.tmp"
    tmp.write_text(NONE)
    tmp.replace(path)
    assert file_signature(path) != first
    assert file_signature(tmp_path / "absent") is None
