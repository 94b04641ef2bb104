"""CPU list and CPU mask notation."""

from __future__ import annotations

import pytest

from pinserve.topology import format_cpulist, parse_cpulist, parse_cpumask
from pinserve.topology.cpuset import MAX_CPUS

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("", set()),
        ("\n", set()),
        ("\x00\x00", set()),
        ("0", {0}),
        ("7\n", {7}),
        ("0-3", {0, 1, 2, 3}),
        ("0-3,8,10-11", {0, 1, 2, 3, 8, 10, 11}),
        ("0-3,8,10-11\n\x00\x00\x00", {0, 1, 2, 3, 8, 10, 11}),
        (" 1, 3 ,5-6 \n", {1, 3, 5, 6}),
        ("5-5", {5}),
        ("8,0-1", {0, 1, 8}),
        ("2,2,1-3", {1, 2, 3}),
        ("0-1,32-33,64", {0, 1, 32, 33, 64}),
        ("1-111", set(range(1, 112))),
    ],
)
def test_parse_cpulist(text: str, cpus: set[int]) -> None:
    assert parse_cpulist(text) == frozenset(cpus)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a", "not a CPU number"),
        ("0-", "not a CPU number"),
        ("-3", "not a CPU number"),
        ("1,,2", "empty item"),
        ("1,", "empty item"),
        ("3-1", "backwards"),
        ("0-3:2/4", "not a CPU number"),
        ("0x1", "not a CPU number"),
        ("1.5", "not a CPU number"),
        ("\uff10", "not a CPU number"),  # a full-width zero: isdecimal() alone would accept it
        (f"0-{MAX_CPUS}", "beyond"),
        ("0-1 2", "not a CPU number"),
    ],
)
def test_parse_cpulist_rejects_garbage(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as info:
        parse_cpulist(text)
    assert repr(text) in str(info.value), "the message quotes the offending input"


@pytest.mark.parametrize(
    ("cpus", "text"),
    [
        ([], ""),
        ([0], "0"),
        ([0, 1], "0-1"),
        ([3, 1, 2, 0, 8, 10, 11], "0-3,8,10-11"),
        ([5, 5, 5], "5"),
        ([0, 2, 4, 6], "0,2,4,6"),
        (range(0, 224), "0-223"),
        ([*range(0, 56), *range(112, 168)], "0-55,112-167"),
        (frozenset({9, 7, 8, 1}), "1,7-9"),
    ],
)
def test_format_cpulist(cpus: list[int], text: str) -> None:
    assert format_cpulist(cpus) == text
    assert parse_cpulist(text) == frozenset(cpus)


def test_format_cpulist_rejects_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_cpulist([-1, 2])


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("", set()),
        ("0", set()),
        ("00000000,00000000\n", set()),
        ("1", {0}),
        ("ff", set(range(8))),
        ("00000000,000000ff", set(range(8))),
        ("00000000,00000101\n", {0, 8}),
        ("00000001,00000000", {32}),
        ("0000,00000000,00000000,00ff00ff", {*range(8), *range(16, 24)}),
        ("0000,00000000,00000000,ff00ff00\x00\x00", {*range(8, 16), *range(24, 32)}),
        ("000000ff,ffff0000,00000000", set(range(48, 72))),
        ("80000000,00000000", {63}),
        ("DEADBEEF", {i for i in range(32) if 0xDEADBEEF >> i & 1}),
    ],
)
def test_parse_cpumask(text: str, cpus: set[int]) -> None:
    assert parse_cpumask(text) == frozenset(cpus)


@pytest.mark.parametrize(
    "text",
    ["0-3", "xyz", "0x ff", "00000000,,00000001", "ff,123456789", "0x1", "+1", "ff,-1", "1_0"],
)
def test_parse_cpumask_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="invalid CPU mask"):
        parse_cpumask(text)


def test_list_and_mask_agree_on_a_large_sparse_set() -> None:
    cpus = {0, 31, 32, 63, 64, 100, 223}
    mask_words = [(sum(1 << c for c in cpus) >> (32 * i)) & 0xFFFFFFFF for i in reversed(range(7))]
    mask = ",".join(f"{w:08x}" for w in mask_words)
    assert parse_cpumask(mask) == parse_cpulist(format_cpulist(cpus)) == frozenset(cpus)
