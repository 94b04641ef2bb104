"""The fetcher's hard limits: bytes downloaded, bytes unpacked, the overall deadline and the stall timeout.

Every byte that reaches the disk goes through a ``Budget``, which counts it before it is written and
checks the deadline, so neither a huge (or endless) download, a zip or tar bomb, nor a server trickling
bytes can fill the model volume or hold the pod for ever. The kubelet's ``emptyDir.sizeLimit`` is the
backstop behind these.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from pinserve.fetch.errors import FetchTimeoutError, InvalidArgumentError, TooLargeError

KiB = 1 << 10
GiB = 1 << 30
DEFAULT_MAX_DOWNLOAD = 32 * GiB
DEFAULT_MAX_UNPACKED = 64 * GiB
DEFAULT_DEADLINE = 3600.0
DEFAULT_STALL = 60.0
MAX_MEMBERS = 1_000_000  # archive entries: an inode bomb of empty files is a bomb too
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}
_SIZE = re.compile(r"^\s*([0-9]+)\s*([kmgt]i?)?b?\s*$", re.I)


def parse_size(text: str) -> int:
    """Bytes from '34359738368', '32Gi', '500M' (Kubernetes-style suffixes, binary with 'i')."""
    found = _SIZE.match(text)
    if not found:
        raise ValueError(f"{text!r} is not a size in bytes (e.g. 34359738368 or 32Gi)")
    return int(found.group(1)) * _UNITS[(found.group(2) or "").lower()]


def human(size: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.4g} {unit}"
    return f"{size} bytes"


@dataclass(frozen=True)
class Limits:
    max_download: int = DEFAULT_MAX_DOWNLOAD  # bytes of the archive (--max-download-bytes)
    max_unpacked: int = DEFAULT_MAX_UNPACKED  # bytes of the unpacked tree (--max-unpacked-bytes)
    deadline: float = DEFAULT_DEADLINE  # seconds for the whole fetch (--deadline-seconds)
    stall: float = DEFAULT_STALL  # seconds without a byte (--timeout / --stall-seconds)

    def check(self) -> None:
        if self.max_download <= 0 or self.max_unpacked <= 0:
            raise InvalidArgumentError("--max-download-bytes and --max-unpacked-bytes must be positive")
        if self.deadline <= 0 or self.stall <= 0:
            raise InvalidArgumentError("--deadline-seconds and the stall timeout must be positive")


@dataclass
class Clock:
    """The overall deadline, from the start of the fetch."""

    deadline: float
    started: float = field(default_factory=time.monotonic)

    def remaining(self) -> float:
        return self.deadline - (time.monotonic() - self.started)

    def check(self, doing: str) -> None:
        if self.remaining() <= 0:
            raise FetchTimeoutError(f"the deadline of {self.deadline:g}s for the whole fetch passed while {doing} "
                                    "(--deadline-seconds; the operator's PINSERVE_FETCH_DEADLINE_SECONDS)")

    def bound(self, stall: float) -> float:
        """A socket timeout: the stall timeout, but never past the deadline."""
        return max(0.05, min(stall, self.remaining()))


@dataclass
class Budget:
    """Counts bytes against one limit (and checks the deadline on every chunk)."""

    limit: int
    what: str  # "the download of s3://b/k", "the unpacked archive s3://b/k"
    flag: str  # "--max-download-bytes"
    setting: str  # "PINSERVE_FETCH_MAX_DOWNLOAD"
    clock: Clock | None = None
    used: int = 0

    def too_large(self, size: int, detail: str = "") -> TooLargeError:
        return TooLargeError(f"{self.what} is larger than the limit of {human(self.limit)} ({self.limit} bytes; "
                             f"{self.flag}, the operator's {self.setting}){detail}")

    def expect(self, size: int, detail: str) -> None:
        """Refuse before any byte is written when a declared size already passes the limit."""
        if self.used + size > self.limit:
            raise self.too_large(size, f": {detail} is {human(size)} ({size} bytes)")

    def add(self, size: int) -> None:
        if self.clock is not None:
            self.clock.check(f"writing {self.what}")
        self.used += size
        if self.used > self.limit:
            raise self.too_large(self.used, f": stopped after {self.used} bytes")
