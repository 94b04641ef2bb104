"""gRPC transport: model status and metadata discovery, request encoding, and a cheap Predict call.

Requests are serialized once; the hot path sends those bytes through a multicallable without serializers,
and responses come back as bytes that are not parsed (except one, to describe the outputs). Throughput
uses grpc.aio channels; the latency loop uses one blocking channel of its own (see runner.py for why).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)

from pinserve.bench.errors import (
    BenchError,
    DeadlineExceededError,
    ModelNotFoundError,
    ServerUnreachableError,
    SignatureNotFoundError,
    error_for_status,
)
from pinserve.bench.inputs import BuiltInput
from pinserve.bench.signature import SignatureSpec, dtype_name, signature_from_proto

PREDICT = "/tensorflow.serving.PredictionService/Predict"
GET_METADATA = "/tensorflow.serving.PredictionService/GetModelMetadata"
GET_STATUS = "/tensorflow.serving.ModelService/GetModelStatus"
_AVAILABLE = 30  # ModelVersionStatus.State.AVAILABLE
_STATE_NAMES = {0: "UNKNOWN", 10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING", 50: "END"}
_RETRY_PAUSE_S = 0.5

Call = Callable[[bytes], Awaitable[Any]]
BlockingCall = Callable[[bytes], Any]


def encode_tensor(built: BuiltInput) -> Any:
    """A TensorProto with the bytes laid out as TensorFlow does (little-endian tensor_content)."""
    arr = built.array
    proto = tensor_pb2.TensorProto(dtype=built.spec.dtype_number)
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in arr.shape)
    if built.spec.dtype == "DT_STRING":
        proto.string_val.extend(arr.ravel().tolist())
    elif built.spec.dtype == "DT_BFLOAT16":
        # bfloat16 is the upper half of a float32 (truncation, as TensorFlow's own cast does).
        as_u32 = np.ascontiguousarray(arr, dtype="<f4").view("<u4")
        proto.tensor_content = (as_u32 >> 16).astype("<u2").tobytes()
    else:
        proto.tensor_content = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    return proto


def _model_spec(model: str, version: int | None, signature: str = "") -> Any:
    spec = model_pb2.ModelSpec(name=model, signature_name=signature)
    if version is not None:
        spec.version.value = version
    return spec


def describe_outputs(raw: bytes) -> dict[str, dict[str, Any]]:
    """Dtype and shape of each output of one serialized PredictResponse."""
    response = predict_pb2.PredictResponse.FromString(raw)
    return {
        name: {"dtype": dtype_name(t.dtype), "shape": [int(d.size) for d in t.tensor_shape.dim]}
        for name, t in sorted(response.outputs.items())
    }


def _channel_options() -> list[tuple[str, Any]]:
    return [
        # Images in and detections or masks out exceed gRPC's 4 MiB default.
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", -1),
        # Each channel gets its own connection; otherwise gRPC shares one subchannel between channels.
        ("grpc.use_local_subchannel_pool", 1),
    ]


class GrpcClient:
    """TF Serving over gRPC: `channels` persistent aio channels for throughput, one blocking for latency."""

    protocol = "grpc"

    def __init__(self, target: str, model: str, version: int | None, deadline: float, *, channels: int = 1) -> None:
        self.target = target
        self.model = model
        self.version = version
        self.deadline = deadline
        self._channels = [grpc.aio.insecure_channel(target, options=_channel_options()) for _ in range(channels)]
        first = self._channels[0]
        self._status = first.unary_unary(
            GET_STATUS,
            request_serializer=get_model_status_pb2.GetModelStatusRequest.SerializeToString,
            response_deserializer=get_model_status_pb2.GetModelStatusResponse.FromString,
        )
        self._metadata = first.unary_unary(
            GET_METADATA,
            request_serializer=get_model_metadata_pb2.GetModelMetadataRequest.SerializeToString,
            response_deserializer=get_model_metadata_pb2.GetModelMetadataResponse.FromString,
        )
        # No serializers: the payload is already bytes and the response stays bytes.
        self._predict = [ch.unary_unary(PREDICT) for ch in self._channels]
        self._blocking: grpc.Channel | None = None

    async def close(self) -> None:
        for ch in self._channels:
            await ch.close()
        if self._blocking is not None:
            self._blocking.close()

    def _model_label(self) -> str:
        return self.model if self.version is None else f"{self.model} version {self.version}"

    def _rpc_failure(self, exc: grpc.aio.AioRpcError, what: str) -> BenchError:
        code = exc.code().name
        if code == "UNAVAILABLE":
            return ServerUnreachableError(f"cannot reach TF Serving at {self.target} ({what}: {code}: {exc.details()})")
        if code == "NOT_FOUND":
            return ModelNotFoundError(f"model '{self._model_label()}' not found at {self.target}: {exc.details()}")
        if code == "DEADLINE_EXCEEDED":
            return DeadlineExceededError(
                f"{what} got no answer from {self.target} within the {self.deadline:g} s deadline"
            )
        return error_for_status(code, f"{what} failed: {code}: {exc.details()}")

    async def _check_status(self) -> None:
        """Fail unless a version is AVAILABLE; servers without the ModelService are let through."""
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=_model_spec(self.model, self.version))
        try:
            response = await self._status(request, timeout=self.deadline)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return
            raise self._rpc_failure(exc, "GetModelStatus") from exc
        states = [(int(s.version), int(s.state), s.status.error_message) for s in response.model_version_status]
        if not any(state == _AVAILABLE for _, state, _ in states):
            found = "; ".join(
                f"version {v}: {_STATE_NAMES.get(st, st)}{' (' + msg + ')' if msg else ''}" for v, st, msg in states
            )
            raise ModelNotFoundError(
                f"model '{self._model_label()}' has no AVAILABLE version ({found or 'no versions'})"
            )

    async def wait_ready(self, wait_seconds: float) -> None:
        """Check the model is served, retrying unreachable or not-yet-loaded for up to `wait_seconds`."""
        give_up = time.monotonic() + wait_seconds
        while True:
            try:
                await self._check_status()
                return
            except (ServerUnreachableError, ModelNotFoundError):
                if time.monotonic() + _RETRY_PAUSE_S > give_up:
                    raise
            await asyncio.sleep(_RETRY_PAUSE_S)

    async def fetch_signature(self, signature: str) -> SignatureSpec:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=_model_spec(self.model, self.version), metadata_field=["signature_def"]
        )
        try:
            response = await self._metadata(request, timeout=self.deadline)
        except grpc.aio.AioRpcError as exc:
            raise self._rpc_failure(exc, "GetModelMetadata") from exc
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        if "signature_def" not in response.metadata or not response.metadata["signature_def"].Unpack(sig_map):
            raise SignatureNotFoundError(f"model '{self._model_label()}' returned no signature_def metadata")
        if signature not in sig_map.signature_def:
            available = ", ".join(sorted(sig_map.signature_def)) or "none"
            raise SignatureNotFoundError(
                f"model '{self._model_label()}' has no signature '{signature}' (available: {available})"
            )
        return signature_from_proto(signature, sig_map.signature_def[signature])

    def build_payload(self, signature: str, inputs: Mapping[str, BuiltInput]) -> bytes:
        request = predict_pb2.PredictRequest(model_spec=_model_spec(self.model, self.version, signature))
        for name, built in inputs.items():
            request.inputs[name].CopyFrom(encode_tensor(built))
        return bytes(request.SerializeToString())

    def latency_caller(self) -> BlockingCall:
        """A blocking Predict on a persistent channel of its own, for the one-in-flight latency loop."""
        if self._blocking is None:
            self._blocking = grpc.insecure_channel(self.target, options=_channel_options())
        return partial(self._blocking.unary_unary(PREDICT), timeout=self.deadline)

    def caller(self, index: int) -> Call:
        """The Predict call for worker `index`: workers are spread round-robin over the channels."""
        return partial(self._predict[index % len(self._predict)], timeout=self.deadline)

    @staticmethod
    def classify(exc: BaseException) -> tuple[str, str] | None:
        """(status code name, message) of a failed call, or None if `exc` is not an RPC failure."""
        # Both the aio and the blocking API raise grpc.RpcError subclasses that carry code() and details().
        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            return exc.code().name, str(exc.details())
        return None

    @staticmethod
    def describe_response(raw: Any) -> dict[str, dict[str, Any]]:
        return describe_outputs(raw)
