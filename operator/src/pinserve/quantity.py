"""Kubernetes resource quantities: just enough to compare CPU and memory."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_SUFFIX: dict[str, int | Decimal] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]{0,2})$")


def parse_quantity(text: str | int | float) -> Decimal:
    """Parse '500m', '4', '16Gi', '1e3' into a Decimal of base units."""
    if isinstance(text, int | float):
        return Decimal(str(text))
    match = _QUANTITY.match(text.strip())
    if not match:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix = match.groups()
    if suffix and suffix not in _SUFFIX:
        raise ValueError(f"unknown quantity suffix in {text!r}")
    try:
        return Decimal(number) * Decimal(_SUFFIX[suffix] if suffix else 1)
    except InvalidOperation:
        raise ValueError(f"not a quantity: {text!r}") from None


def whole_cpus(text: str | int | float) -> int:
    """Whole CPUs in a CPU quantity, rounded down ('3500m' -> 3)."""
    return int(parse_quantity(text))


def memory_bytes(text: str | int | float) -> int:
    return int(parse_quantity(text))
