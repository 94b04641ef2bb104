"""Signature parsing, shape resolution, value generation, data files and tensor encoding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from pinserve.bench.errors import InvalidInputError
from pinserve.bench.grpc_client import encode_tensor
from pinserve.bench.inputs import BuiltInput, InputOptions, build_inputs, resolve_shape
from pinserve.bench.signature import DTYPES, SignatureSpec, TensorSpec, signature_from_json

pytestmark = pytest.mark.unit


def _sig(*specs: TensorSpec) -> SignatureSpec:
    return SignatureSpec("serving_default", "tensorflow/serving/predict", {s.name: s for s in specs}, {})


def test_dtype_numbers_match_tensorflow() -> None:
    for name, (number, _) in DTYPES.items():
        assert types_pb2.DataType.Value(name) == number


def test_batch_dimension_takes_the_batch_size() -> None:
    notes: list[str] = []
    assert resolve_shape(TensorSpec("x", "DT_FLOAT", (-1, 4)), 8, None, 1, notes) == (8, 4)
    assert notes == []


def test_unknown_dims_default_and_are_noted() -> None:
    notes: list[str] = []
    assert resolve_shape(TensorSpec("img", "DT_UINT8", (-1, -1, -1, 3)), 2, None, 1, notes) == (2, 1, 1, 3)
    assert "unknown dimension(s) [1, 2]" in notes[0] and "--shape img=" in notes[0]


def test_shape_override_fills_dynamic_dims_but_not_the_batch() -> None:
    notes: list[str] = []
    spec = TensorSpec("img", "DT_UINT8", (-1, -1, -1, 3))
    assert resolve_shape(spec, 4, (1, 600, 600, 3), 1, notes) == (4, 600, 600, 3)
    assert notes == []


def test_fixed_batch_dimension_is_kept_and_noted() -> None:
    notes: list[str] = []
    assert resolve_shape(TensorSpec("x", "DT_FLOAT", (1, 4)), 8, None, 1, notes) == (1, 4)
    assert "fixes the batch dimension at 1" in notes[0]


def test_scalar_input() -> None:
    assert resolve_shape(TensorSpec("t", "DT_FLOAT", ()), 8, None, 1, []) == ()


@pytest.mark.parametrize(
    ("spec", "override", "message"),
    [
        (TensorSpec("x", "DT_FLOAT", None), None, "unknown rank"),
        (TensorSpec("x", "DT_FLOAT", (-1, 4)), (1, 4, 4), "rank 3"),
        (TensorSpec("x", "DT_FLOAT", (-1, 4)), (1, 5), "fixes it at 4"),
    ],
)
def test_shape_errors(spec: TensorSpec, override: tuple[int, ...] | None, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        resolve_shape(spec, 1, override, 1, [])


def test_unknown_rank_with_override() -> None:
    assert resolve_shape(TensorSpec("x", "DT_FLOAT", None), 3, (1, 2), 1, []) == (3, 2)


def test_generation_per_dtype_is_seeded_and_in_range() -> None:
    specs = [
        TensorSpec("f", "DT_FLOAT", (-1, 3)),
        TensorSpec("d", "DT_DOUBLE", (-1,)),
        TensorSpec("i", "DT_INT64", (-1, 5)),
        TensorSpec("u", "DT_UINT8", (-1, 2, 2, 3)),
        TensorSpec("b", "DT_BOOL", (-1,)),
        TensorSpec("s", "DT_STRING", (-1,)),
        TensorSpec("h", "DT_HALF", (-1, 2)),
        TensorSpec("bf", "DT_BFLOAT16", (-1, 2)),
    ]
    built = build_inputs(_sig(*specs), 4, InputOptions(seed=7))
    again = build_inputs(_sig(*specs), 4, InputOptions(seed=7))
    t = {name: b.array for name, b in built.tensors.items()}
    assert built.items == 4
    assert t["f"].dtype == np.float32 and t["f"].shape == (4, 3) and ((t["f"] >= 0) & (t["f"] < 1)).all()
    assert t["d"].dtype == np.float64
    assert t["i"].dtype == np.int64 and t["i"].min() >= 0 and t["i"].max() < 10
    assert t["u"].dtype == np.uint8 and t["u"].shape == (4, 2, 2, 3)
    assert t["b"].dtype == np.bool_
    assert t["s"].dtype == object and all(isinstance(v, bytes) and len(v) == 16 for v in t["s"])
    assert t["h"].dtype == np.float16
    for name, arr in t.items():
        np.testing.assert_array_equal(arr, again.tensors[name].array)


def test_zeros_fill() -> None:
    built = build_inputs(
        _sig(TensorSpec("f", "DT_FLOAT", (-1, 3)), TensorSpec("s", "DT_STRING", (-1,))), 2, InputOptions(fill="zeros")
    )
    assert not built.tensors["f"].array.any()
    assert list(built.tensors["s"].array) == [b"", b""]


def test_unknown_option_names_are_rejected() -> None:
    sig = _sig(TensorSpec("x", "DT_FLOAT", (-1, 4)))
    with pytest.raises(InvalidInputError, match="--shape names nope"):
        build_inputs(sig, 1, InputOptions(shapes={"nope": (1,)}))
    with pytest.raises(InvalidInputError, match="--input-file names nope"):
        build_inputs(sig, 1, InputOptions(files={"nope": "/dev/null"}))


def test_unsupported_dtype_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match="DT_RESOURCE"):
        build_inputs(_sig(TensorSpec("r", "DT_RESOURCE", ())), 1, InputOptions())


def test_npy_file_is_repeated_to_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.float64))
    built = build_inputs(_sig(TensorSpec("x", "DT_FLOAT", (-1, 4))), 3, InputOptions(files={"x": str(path)}))
    arr = built.tensors["x"].array
    assert arr.dtype == np.float32
    np.testing.assert_array_equal(arr, [[1, 2, 3, 4], [5, 6, 7, 8], [1, 2, 3, 4]])
    assert any("converted to float32" in n for n in built.notes)
    assert built.tensors["x"].source == f"file:{path}"


def test_npy_file_without_batch_dimension_decides_dynamic_dims(tmp_path: Path) -> None:
    path = tmp_path / "img.npy"
    np.save(path, np.full((5, 7, 3), 9, dtype=np.uint8))
    built = build_inputs(
        _sig(TensorSpec("img", "DT_UINT8", (-1, -1, -1, 3))), 2, InputOptions(files={"img": str(path)})
    )
    assert built.tensors["img"].array.shape == (2, 5, 7, 3)
    assert built.notes == []


def test_npy_file_that_contradicts_the_signature(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 5), np.float32))
    with pytest.raises(InvalidInputError, match="fixes it at 4"):
        build_inputs(_sig(TensorSpec("x", "DT_FLOAT", (-1, 4))), 1, InputOptions(files={"x": str(path)}))


def test_missing_file() -> None:
    with pytest.raises(InvalidInputError, match="no-such"):
        build_inputs(_sig(TensorSpec("x", "DT_FLOAT", (-1, 4))), 1, InputOptions(files={"x": "/no-such.npy"}))


def test_raw_bytes_for_a_string_input(tmp_path: Path) -> None:
    path = tmp_path / "cat.jpg"
    path.write_bytes(b"\xff\xd8not-really-a-jpeg")
    built = build_inputs(
        _sig(TensorSpec("image_bytes", "DT_STRING", (-1,))), 3, InputOptions(files={"image_bytes": str(path)})
    )
    assert list(built.tensors["image_bytes"].array) == [path.read_bytes()] * 3


def test_image_file_for_a_numeric_input(tmp_path: Path) -> None:
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    path = tmp_path / "img.png"
    path.write_bytes(tf.io.encode_png(pixels).numpy())
    built = build_inputs(
        _sig(TensorSpec("img", "DT_UINT8", (-1, -1, -1, 3))), 2, InputOptions(files={"img": str(path)})
    )
    np.testing.assert_array_equal(built.tensors["img"].array, np.stack([pixels, pixels]))


def test_undecodable_file_for_a_numeric_input(tmp_path: Path) -> None:
    path = tmp_path / "junk.bin"
    path.write_bytes(b"junk")
    with pytest.raises(InvalidInputError, match=r"not \.npy and not a decodable image"):
        build_inputs(_sig(TensorSpec("img", "DT_UINT8", (-1, -1, -1, 3))), 1, InputOptions(files={"img": str(path)}))


@pytest.mark.parametrize(
    "dtype", ["DT_FLOAT", "DT_DOUBLE", "DT_INT32", "DT_INT64", "DT_UINT8", "DT_INT8", "DT_INT16", "DT_UINT16",
              "DT_UINT32", "DT_UINT64", "DT_BOOL", "DT_HALF", "DT_STRING"],
)  # fmt: skip
def test_encoded_tensors_decode_identically_in_tensorflow(dtype: str) -> None:
    spec = TensorSpec("t", dtype, (-1, 3))
    arr = build_inputs(_sig(spec), 2, InputOptions(seed=3)).tensors["t"].array
    decoded = tf.make_ndarray(encode_tensor(BuiltInput(spec, arr, "random")))
    assert decoded.shape == (2, 3)
    np.testing.assert_array_equal(decoded, arr)


def test_bfloat16_encoding_truncates_like_tensorflow() -> None:
    values = np.array([[1.0, 0.333333, -2.75]], dtype=np.float32)
    proto = encode_tensor(BuiltInput(TensorSpec("t", "DT_BFLOAT16", (-1, 3)), values, "file"))
    decoded = tf.make_ndarray(proto).astype(np.float32)
    expected = tf.cast(tf.constant(values), tf.bfloat16).numpy().astype(np.float32)
    np.testing.assert_allclose(decoded, expected, rtol=1e-2)


def test_signature_from_rest_json() -> None:
    sig_json: dict[str, Any] = {
        "inputs": {
            "x": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1"}, {"size": "4"}], "unknown_rank": False}},
            "u": {"dtype": "DT_INT32", "tensor_shape": {"unknown_rank": True}},
            "t": {"dtype": "DT_FLOAT", "tensor_shape": {}},
        },
        "outputs": {"y": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1"}]}}},
        "method_name": "tensorflow/serving/predict",
    }
    sig = signature_from_json("serving_default", sig_json)
    assert sig.inputs["x"] == TensorSpec("x", "DT_FLOAT", (-1, 4))
    assert sig.inputs["u"].shape is None
    assert sig.inputs["t"].shape == ()
    assert sig.outputs["y"].shape == (-1,)
    assert sig.method == "tensorflow/serving/predict"
