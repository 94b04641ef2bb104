"""Kubernetes quantities: parsing, whole CPUs, memory bytes."""

from __future__ import annotations

from decimal import Decimal

import pytest

from pinserve.quantity import memory_bytes, parse_quantity, whole_cpus

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("text", "value"), [
    ("4", Decimal(4)),
    ("500m", Decimal("0.5")),
    ("3500m", Decimal("3.5")),
    ("1k", Decimal(1000)),
    ("1Ki", Decimal(1024)),
    ("16Gi", Decimal(16 * 2**30)),
    ("1.5Gi", Decimal(3 * 2**29)),
    ("2M", Decimal(2_000_000)),
    ("1E", Decimal(10**18)),
    ("1Ei", Decimal(2**60)),
    ("1e3", Decimal(1000)),
    ("1E3", Decimal(1000)),
    ("100n", Decimal("1e-7")),
    ("250u", Decimal("0.00025")),
    (" 8Gi ", Decimal(8 * 2**30)),
    (7, Decimal(7)),
    (0.25, Decimal("0.25")),
])
def test_parse_quantity(text: str | int | float, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "Gi", "8 GB", "8gb", "8Gx", "1.2.3", "..", "four", "8Gi8"])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(text)


@pytest.mark.parametrize(("text", "cpus"), [
    ("4", 4), ("3500m", 3), ("999m", 0), ("1000m", 1), ("64", 64), (2, 2), ("0", 0),
])
def test_whole_cpus_rounds_down(text: str | int, cpus: int) -> None:
    assert whole_cpus(text) == cpus


@pytest.mark.parametrize(("text", "size"), [
    ("8Gi", 8 * 2**30), ("512Mi", 512 * 2**20), ("1G", 10**9), ("123456789", 123456789), ("1.5Ki", 1536),
])
def test_memory_bytes(text: str, size: int) -> None:
    assert memory_bytes(text) == size


def test_equal_quantities_in_different_spellings() -> None:
    assert parse_quantity("1024Mi") == parse_quantity("1Gi")
    assert parse_quantity("1000m") == parse_quantity("1")
    assert parse_quantity("0.5Gi") == parse_quantity("512Mi")
