"""CPU set notation as the kernel writes it: lists ("0-3,8,10-11") and hex masks ("00000000,000000ff")."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["MAX_CPUS", "format_cpulist", "parse_cpulist", "parse_cpumask"]

# Far above any real NR_CPUS (the kernel tops out at 8192); a cap turns a garbage "0-4000000000" into an
# error instead of a multi-gigabyte set.
MAX_CPUS = 1 << 16

# sysfs and procfs files may end in newlines or NUL padding; cgroup files are written by humans too.
_JUNK = " \t\r\n\x00"
_HEX = frozenset("0123456789abcdefABCDEF")


def _clean(text: str) -> str:
    return text.strip(_JUNK)


def _cpu_number(token: str, text: str) -> int:
    token = token.strip(" \t")
    if not token.isdecimal() or not token.isascii():
        raise ValueError(f"invalid CPU list {text!r}: {token!r} is not a CPU number")
    value = int(token)
    if value >= MAX_CPUS:
        raise ValueError(f"invalid CPU list {text!r}: CPU {value} is beyond {MAX_CPUS - 1}")
    return value


def parse_cpulist(text: str) -> frozenset[int]:
    """Parse a kernel CPU list such as ``"0-3,8,10-11"``; an empty or blank string is the empty set."""
    body = _clean(text)
    if not body:
        return frozenset()
    cpus: set[int] = set()
    for item in body.split(","):
        if not item.strip(" \t"):
            raise ValueError(f"invalid CPU list {text!r}: empty item")
        first, sep, last = item.partition("-")
        low = _cpu_number(first, text)
        high = _cpu_number(last, text) if sep else low
        if high < low:
            raise ValueError(f"invalid CPU list {text!r}: range {item.strip()!r} runs backwards")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """Write CPUs in the kernel's canonical list form: ascending, runs of two or more as ranges."""
    ordered = sorted(set(cpus))
    if ordered and ordered[0] < 0:
        raise ValueError(f"CPU numbers cannot be negative: {ordered[0]}")
    parts: list[str] = []
    start = 0
    for i, cpu in enumerate(ordered):
        last_of_run = i + 1 == len(ordered) or ordered[i + 1] != cpu + 1
        if not last_of_run:
            continue
        first = ordered[start]
        parts.append(str(first) if first == cpu else f"{first}-{cpu}")
        start = i + 1
    return ",".join(parts)


def parse_cpumask(text: str) -> frozenset[int]:
    """Parse a kernel hex CPU mask, most significant 32-bit word first: ``"00000000,000000ff"`` is 0-7."""
    body = _clean(text)
    if not body:
        return frozenset()
    words = body.split(",")
    value = 0
    for i, raw in enumerate(words):
        word = raw.strip(" \t")
        # Only the leading word may be short (the kernel trims it to the mask width); a long inner word
        # would silently shift every CPU, so it is rejected as garbage.
        if not word or (i > 0 and len(word) > 8):
            raise ValueError(f"invalid CPU mask {text!r}: bad word {word!r}")
        if not all(c in _HEX for c in word):
            raise ValueError(f"invalid CPU mask {text!r}: {word!r} is not hexadecimal")
        value = (value << 32) | int(word, 16)
    if value.bit_length() > MAX_CPUS:
        raise ValueError(f"invalid CPU mask {text!r}: more than {MAX_CPUS} CPUs")
    return frozenset(i for i in range(value.bit_length()) if value >> i & 1)
