"""A model signature as the benchmark needs it, parsed from gRPC protos or from the REST metadata JSON.

Pure: no TensorFlow import. Protos are read by attribute (duck typing) so this module does not depend on
the generated classes; the DataType numbers are those of tensorflow/core/framework/types.proto.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# DataType enum name -> (wire number, numpy dtype used to generate values). DT_BFLOAT16 is generated as
# float32 and truncated at encoding time, since numpy has no bfloat16.
DTYPES: dict[str, tuple[int, np.dtype[Any]]] = {
    "DT_FLOAT": (1, np.dtype(np.float32)),
    "DT_DOUBLE": (2, np.dtype(np.float64)),
    "DT_INT32": (3, np.dtype(np.int32)),
    "DT_UINT8": (4, np.dtype(np.uint8)),
    "DT_INT16": (5, np.dtype(np.int16)),
    "DT_INT8": (6, np.dtype(np.int8)),
    "DT_STRING": (7, np.dtype(object)),
    "DT_INT64": (9, np.dtype(np.int64)),
    "DT_BOOL": (10, np.dtype(np.bool_)),
    "DT_BFLOAT16": (14, np.dtype(np.float32)),
    "DT_UINT16": (17, np.dtype(np.uint16)),
    "DT_HALF": (19, np.dtype(np.float16)),
    "DT_UINT32": (22, np.dtype(np.uint32)),
    "DT_UINT64": (23, np.dtype(np.uint64)),
}
_NAME_BY_NUMBER = {number: name for name, (number, _) in DTYPES.items()}

PREDICT_METHOD = "tensorflow/serving/predict"


@dataclass(frozen=True)
class TensorSpec:
    """A signature input or output: dtype name (DT_FLOAT...), shape (-1 unknown dim, None unknown rank)."""

    name: str
    dtype: str
    shape: tuple[int, ...] | None

    @property
    def supported(self) -> bool:
        return self.dtype in DTYPES

    @property
    def dtype_number(self) -> int:
        return DTYPES[self.dtype][0]

    def describe(self) -> str:
        dims = "?" if self.shape is None else "[" + ",".join("?" if d < 0 else str(d) for d in self.shape) + "]"
        return f"{self.name}:{self.dtype}{dims}"


@dataclass(frozen=True)
class SignatureSpec:
    name: str
    method: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]


def dtype_name(number: int) -> str:
    """Name of a DataType number; unsupported ones keep a readable placeholder instead of failing here."""
    return _NAME_BY_NUMBER.get(number, f"DT_ENUM_{number}")


def _shape_from_proto(shape: Any) -> tuple[int, ...] | None:
    if shape.unknown_rank:
        return None
    return tuple(int(d.size) for d in shape.dim)


def signature_from_proto(name: str, sig_def: Any) -> SignatureSpec:
    """Build a SignatureSpec from a tensorflow.SignatureDef message."""

    def tensors(items: Any) -> dict[str, TensorSpec]:
        return {
            key: TensorSpec(key, dtype_name(int(info.dtype)), _shape_from_proto(info.tensor_shape))
            for key, info in sorted(items.items())
        }

    return SignatureSpec(name, str(sig_def.method_name), tensors(sig_def.inputs), tensors(sig_def.outputs))


def _shape_from_json(shape: Mapping[str, Any] | None) -> tuple[int, ...] | None:
    # proto3 JSON omits default fields: an absent shape or dim list is a scalar, as in the proto.
    if not shape:
        return ()
    if shape.get("unknown_rank"):
        return None
    # int64 fields arrive as strings in proto3 JSON.
    return tuple(int(d.get("size", 0)) for d in shape.get("dim", []))


def _dtype_from_json(value: Any) -> str:
    if isinstance(value, int):
        return dtype_name(value)
    return str(value) if value else "DT_INVALID"


def signature_from_json(name: str, sig_def: Mapping[str, Any]) -> SignatureSpec:
    """Build a SignatureSpec from one entry of the REST metadata's signature_def map."""

    def tensors(items: Mapping[str, Any]) -> dict[str, TensorSpec]:
        return {
            key: TensorSpec(key, _dtype_from_json(info.get("dtype")), _shape_from_json(info.get("tensor_shape")))
            for key, info in sorted(items.items())
        }

    return SignatureSpec(
        name,
        str(sig_def.get("method_name", "")),
        tensors(sig_def.get("inputs", {})),
        tensors(sig_def.get("outputs", {})),
    )
