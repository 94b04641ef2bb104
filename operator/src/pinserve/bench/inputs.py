"""Input tensors generated from a model signature: shapes resolved, values filled, files loaded.

Shape rules (documented in the CLI help too):
- dimension 0 is the batch dimension. When the signature leaves it unknown (-1) it becomes the batch size
  (1 for latency runs, --batch-size for throughput). When the signature fixes it, the fixed value is sent
  and a note says so; items per request follow the tensor.
- `--shape name=d0,d1,...` gives the full shape of an input (dimension 0 is still replaced by the batch
  size); it must have the signature's rank and agree with its fixed dimensions.
- other unknown dimensions default to `--default-dim` (1) and a note names them, because no default is
  right for every model (an image model wants its real height and width: pass --shape).
- an input of unknown rank needs --shape.

Values: `--fill random` draws floats uniformly from [0, 1), integers from [0, 10) (small, so index-like
inputs stay in range), uint8 over its full range (pixels), bools at random and strings as 16 random
letters; `--fill zeros` sends zeros, False and empty strings. The generator is seeded (--seed), so runs
repeat. `--input-file name=PATH` sends real data: a .npy array (with or without the batch dimension;
repeated along dimension 0 to the batch size), or raw bytes for a DT_STRING input (an encoded image, say);
any other file for a numeric input is decoded as an image (PNG, JPEG, GIF, BMP) with TensorFlow.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pinserve.bench.errors import InvalidInputError
from pinserve.bench.signature import DTYPES, SignatureSpec, TensorSpec

FILLS = ("random", "zeros")
_STRING_LENGTH = 16
_LETTERS = np.frombuffer(string.ascii_letters.encode(), dtype=np.uint8)


@dataclass(frozen=True)
class InputOptions:
    fill: str = "random"
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0
    default_dim: int = 1


@dataclass(frozen=True)
class BuiltInput:
    spec: TensorSpec
    array: np.ndarray[Any, Any]
    source: str

    def describe(self) -> dict[str, Any]:
        return {"dtype": self.spec.dtype, "shape": list(self.array.shape), "source": self.source}


@dataclass(frozen=True)
class BuiltInputs:
    tensors: dict[str, BuiltInput]
    items: int
    notes: list[str]


def _check_names(sig: SignatureSpec, names: Mapping[str, object], option: str) -> None:
    unknown = sorted(set(names) - set(sig.inputs))
    if unknown:
        raise InvalidInputError(
            f"{option} names {', '.join(unknown)}, not an input of signature '{sig.name}' "
            f"(inputs: {', '.join(s.describe() for s in sig.inputs.values())})"
        )


def resolve_shape(
    spec: TensorSpec,
    batch_size: int,
    override: tuple[int, ...] | None,
    default_dim: int | None,
    notes: list[str],
) -> tuple[int, ...]:
    """The concrete shape to send for one input (rules in the module docstring).

    With `default_dim` None, unknown non-batch dimensions stay -1 (a data file will decide them).
    """
    if override is None and spec.shape is None:
        raise InvalidInputError(f"input '{spec.name}' has unknown rank; give its shape with --shape {spec.name}=...")
    if override is not None and spec.shape is not None:
        if len(override) != len(spec.shape):
            raise InvalidInputError(
                f"--shape {spec.name} has rank {len(override)}, the signature says {spec.describe()}"
            )
        for i, (want, got) in enumerate(zip(spec.shape, override, strict=True)):
            if i > 0 and want >= 0 and want != got:
                raise InvalidInputError(f"--shape {spec.name} dimension {i} is {got}, the signature fixes it at {want}")
    base = override if override is not None else spec.shape
    assert base is not None
    dims = list(base)
    if dims:
        fixed_batch = spec.shape[0] if spec.shape else -1
        if fixed_batch < 0:
            dims[0] = batch_size
        else:
            dims[0] = fixed_batch
            if fixed_batch != batch_size:
                notes.append(
                    f"input '{spec.name}': the signature fixes the batch dimension at {fixed_batch}; "
                    f"sending {fixed_batch} per request instead of {batch_size}"
                )
    defaulted = [i for i in range(1, len(dims)) if dims[i] < 0]
    if default_dim is None:
        return tuple(dims)
    for i in defaulted:
        dims[i] = default_dim
    if defaulted:
        notes.append(
            f"input '{spec.name}': unknown dimension(s) {defaulted} set to {default_dim}; "
            f"use --shape {spec.name}=... for real sizes"
        )
    if any(d < 0 for d in dims):
        raise InvalidInputError(f"--shape {spec.name} has a negative dimension: {dims}")
    return tuple(dims)


def _generate(spec: TensorSpec, shape: tuple[int, ...], fill: str, rng: np.random.Generator) -> np.ndarray[Any, Any]:
    dtype = DTYPES[spec.dtype][1]
    count = int(np.prod(shape, dtype=np.int64))
    if spec.dtype == "DT_STRING":
        if fill == "zeros":
            values = [b""] * count
        else:
            letters = rng.choice(_LETTERS, size=(count, _STRING_LENGTH))
            values = [row.tobytes() for row in letters]
        out = np.empty(count, dtype=object)
        out[:] = values
        return out.reshape(shape)
    if fill == "zeros":
        return np.zeros(shape, dtype=dtype)
    if dtype.kind == "f":
        return rng.random(shape, dtype=np.float64).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    high = 256 if dtype == np.uint8 else 10
    return rng.integers(0, high, size=shape).astype(dtype)


def _decode_image(data: bytes, spec: TensorSpec, path: str) -> np.ndarray[Any, Any]:
    # TensorFlow is imported only here: it is slow to import and only image files need it.
    import tensorflow as tf  # noqa: PLC0415

    channels = spec.shape[-1] if spec.shape and spec.shape[-1] in (1, 3, 4) else 0
    try:
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
    except Exception as exc:
        raise InvalidInputError(f"--input-file {spec.name}={path}: not .npy and not a decodable image ({exc})") from exc
    return np.asarray(image.numpy())


def _fit_to_batch(
    arr: np.ndarray[Any, Any], spec: TensorSpec, shape: tuple[int, ...], path: str
) -> np.ndarray[Any, Any]:
    """Give a loaded array the batch dimension and the batch size; other dims come from the file."""
    rank = len(shape)
    if arr.ndim == rank - 1:
        arr = arr[np.newaxis, ...]
    if arr.ndim != rank:
        raise InvalidInputError(
            f"--input-file {spec.name}={path}: array of shape {list(arr.shape)} does not fit "
            f"{spec.describe()} (rank {rank}, with or without the batch dimension)"
        )
    if rank == 0:
        return arr
    if spec.shape is not None:
        for i in range(1, rank):
            if spec.shape[i] >= 0 and spec.shape[i] != arr.shape[i]:
                raise InvalidInputError(
                    f"--input-file {spec.name}={path}: dimension {i} is {arr.shape[i]}, "
                    f"the signature fixes it at {spec.shape[i]}"
                )
    if arr.shape[0] != shape[0]:
        if arr.shape[0] == 0:
            raise InvalidInputError(f"--input-file {spec.name}={path}: the array is empty")
        # Repeat the file's items cyclically so any batch size can be served from one example.
        arr = np.take(arr, np.arange(shape[0]) % arr.shape[0], axis=0)
    return arr


def _load_file(spec: TensorSpec, shape: tuple[int, ...], path: str, notes: list[str]) -> np.ndarray[Any, Any]:
    try:
        if path.endswith(".npy"):
            arr: np.ndarray[Any, Any] = np.load(path, allow_pickle=False)
        else:
            data = Path(path).read_bytes()
            if spec.dtype == "DT_STRING":
                out = np.empty(int(np.prod(shape, dtype=np.int64)), dtype=object)
                out[:] = [data] * out.size
                return out.reshape(shape)
            arr = _decode_image(data, spec, path)
    except OSError as exc:
        raise InvalidInputError(f"--input-file {spec.name}={path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise InvalidInputError(f"--input-file {spec.name}={path}: {exc}") from exc
    arr = _fit_to_batch(arr, spec, shape, path)
    if spec.dtype == "DT_STRING":
        if arr.dtype.kind not in "SO":
            raise InvalidInputError(f"--input-file {spec.name}={path}: a DT_STRING input needs bytes, got {arr.dtype}")
        return arr.astype(object)
    want = DTYPES[spec.dtype][1]
    if arr.dtype != want:
        notes.append(f"input '{spec.name}': {path} holds {arr.dtype}, converted to {want}")
        arr = arr.astype(want)
    return arr


def build_inputs(sig: SignatureSpec, batch_size: int, options: InputOptions) -> BuiltInputs:
    """Tensors for one request of `batch_size` items, keyed by signature input name."""
    if options.fill not in FILLS:
        raise InvalidInputError(f"--fill must be one of {', '.join(FILLS)}, not {options.fill!r}")
    _check_names(sig, options.shapes, "--shape")
    _check_names(sig, options.files, "--input-file")
    if not sig.inputs:
        raise InvalidInputError(f"signature '{sig.name}' has no inputs")
    rng = np.random.default_rng(options.seed)
    notes: list[str] = []
    tensors: dict[str, BuiltInput] = {}
    for name, spec in sig.inputs.items():
        if not spec.supported:
            raise InvalidInputError(f"input '{name}' has dtype {spec.dtype}, which the benchmark cannot generate")
        path = options.files.get(name)
        # A numeric data file brings its own dimensions; only generated tensors need defaults.
        from_file = path is not None and spec.dtype != "DT_STRING"
        default_dim = None if from_file else options.default_dim
        shape = resolve_shape(spec, batch_size, options.shapes.get(name), default_dim, notes)
        if path is not None:
            tensors[name] = BuiltInput(spec, _load_file(spec, shape, path, notes), f"file:{path}")
        else:
            tensors[name] = BuiltInput(spec, _generate(spec, shape, options.fill, rng), options.fill)
    batched = [t.array.shape[0] for t in tensors.values() if t.array.ndim > 0]
    items = batched[0] if batched else 1
    return BuiltInputs(tensors, items, notes)
