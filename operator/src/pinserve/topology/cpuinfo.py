"""The CPU model name and the instruction-set flags oneDNN (TensorFlow's MKL backend) picks kernels by."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ONEDNN_ISA_FLAGS", "read_cpuinfo"]

# The order is oneDNN's ladder of x86 ISAs, oldest first; reports list the present ones in this order.
ONEDNN_ISA_FLAGS: tuple[str, ...] = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)

# x86 says "model name"; 32-bit ARM said "Processor"; POWER says "cpu".
_MODEL_KEYS = ("model name", "Processor", "cpu")


def read_cpuinfo(root: str | Path = "/") -> tuple[str, tuple[str, ...]]:
    """Return (model name, present ISA flags) from ``proc/cpuinfo`` under the filesystem ``root``.

    Both are empty when the file is absent or says nothing of them. Only the first CPU's block is read:
    every core of a package reports the same model and flags.
    """
    try:
        text = (Path(root) / "proc" / "cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "", ()
    models: dict[str, str] = {}
    flags: frozenset[str] = frozenset()
    for line in text.splitlines():
        if not line.strip():
            if models or flags:
                break  # end of the first CPU's block
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        if key in _MODEL_KEYS:
            models.setdefault(key, value)
        elif key == "flags":
            flags = frozenset(value.split())
    model = next((models[key] for key in _MODEL_KEYS if key in models), "")
    # Firmware pads the brand string with runs of spaces; one space reads the same and diffs cleanly.
    return " ".join(model.replace("\x00", " ").split()), tuple(f for f in ONEDNN_ISA_FLAGS if f in flags)
