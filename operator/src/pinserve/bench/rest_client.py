"""REST transport (TF Serving's :predict on 8501) over persistent keep-alive connections.

Throughput uses aiohttp (one pooled connection per concurrent worker); the latency loop uses one blocking
stdlib http.client connection, for the reason given in runner.py.

Failures are named like gRPC status codes (from TF Serving's HTTP mapping) so reports and exit codes
read the same for both protocols. No TensorFlow import here: REST needs none.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import numpy as np

from pinserve.bench.errors import (
    BenchError,
    DeadlineExceededError,
    InvalidInputError,
    ModelNotFoundError,
    ServerUnreachableError,
    SignatureNotFoundError,
    error_for_status,
)
from pinserve.bench.inputs import BuiltInput
from pinserve.bench.signature import SignatureSpec, signature_from_json

REST_FORMATS = ("inputs", "instances")
_HTTP_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_RETRY_PAUSE_S = 0.5

Call = Callable[[bytes], Awaitable[Any]]
BlockingCall = Callable[[bytes], Any]


class RestError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _jsonable(built: BuiltInput) -> Any:
    arr = built.array
    if built.spec.dtype == "DT_STRING":
        # TF Serving's REST API takes binary strings as {"b64": ...}.
        flat = [{"b64": base64.b64encode(bytes(v)).decode("ascii")} for v in arr.ravel()]
        return np.array(flat, dtype=object).reshape(arr.shape).tolist()
    return arr.tolist()


def encode_body(signature: str, inputs: Mapping[str, BuiltInput], fmt: str) -> bytes:
    """The JSON body of a :predict call, columnar ("inputs") or row ("instances") format."""
    if fmt == "inputs":
        body: dict[str, Any] = {
            "signature_name": signature,
            "inputs": {n: _jsonable(b) for n, b in inputs.items()},
        }
    elif fmt == "instances":
        columns = {n: _jsonable(b) for n, b in inputs.items()}
        sizes = {n: b.array.shape[0] if b.array.ndim else None for n, b in inputs.items()}
        if None in sizes.values() or len(set(sizes.values())) != 1:
            raise InvalidInputError(
                f"row format needs every input batched alike, got {sizes}; use --rest-format inputs"
            )
        rows = next(iter(sizes.values()))
        assert rows is not None
        instances = [{n: col[i] for n, col in columns.items()} for i in range(rows)]
        body = {"signature_name": signature, "instances": instances}
    else:
        raise InvalidInputError(f"--rest-format must be one of {', '.join(REST_FORMATS)}, not {fmt!r}")
    return json.dumps(body, separators=(",", ":")).encode()


def _error_text(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(parsed, dict) and "error" in parsed:
        return str(parsed["error"])
    return body[:200].decode("utf-8", "replace")


class RestClient:
    """TF Serving over HTTP/JSON; `connections` bounds the keep-alive pool (one per concurrent worker)."""

    protocol = "rest"

    def __init__(
        self,
        target: str,
        model: str,
        version: int | None,
        deadline: float,
        *,
        connections: int = 1,
        fmt: str = "inputs",
    ) -> None:
        host = target.removeprefix("http://").rstrip("/")
        self._host = host
        self.target = target
        self.model = model
        self.version = version
        self.deadline = deadline
        self.fmt = fmt
        suffix = f"/versions/{version}" if version is not None else ""
        self._path = f"/v1/models/{quote(model, safe='')}{suffix}"
        self._base = f"http://{host}{self._path}"
        self._predict_url = self._base + ":predict"
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._conn: http.client.HTTPConnection | None = None

    def _http(self) -> aiohttp.ClientSession:
        # Created on first use so it binds to the running event loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.deadline),
                headers={"Content-Type": "application/json"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._conn is not None:
            self._conn.close()

    def _label(self) -> str:
        return self.model if self.version is None else f"{self.model} version {self.version}"

    async def _get(self, url: str, what: str) -> Any:
        try:
            async with self._http().get(url) as response:
                body = await response.read()
                status = response.status
        except TimeoutError as exc:
            # Before ClientConnectionError: aiohttp's ServerTimeoutError is both.
            raise DeadlineExceededError(
                f"{what} got no answer from {self.target} within the {self.deadline:g} s deadline"
            ) from exc
        except aiohttp.ClientConnectionError as exc:
            raise ServerUnreachableError(f"cannot reach TF Serving at {self.target} ({what}: {exc})") from exc
        if status == 404:
            raise ModelNotFoundError(f"model '{self._label()}' not found at {self.target}: {_error_text(body)}")
        if status != 200:
            code = _HTTP_CODES.get(status, f"HTTP_{status}")
            raise error_for_status(code, f"{what} failed: HTTP {status}: {_error_text(body)}")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise BenchError(f"{what} returned invalid JSON: {exc}") from exc

    async def wait_ready(self, wait_seconds: float) -> None:
        give_up = time.monotonic() + wait_seconds
        while True:
            try:
                status = await self._get(self._base, "model status")
                states = [s.get("state") for s in status.get("model_version_status", [])]
                if "AVAILABLE" not in states:
                    raise ModelNotFoundError(f"model '{self._label()}' has no AVAILABLE version (states: {states})")
                return
            except (ServerUnreachableError, ModelNotFoundError):
                if time.monotonic() + _RETRY_PAUSE_S > give_up:
                    raise
            await asyncio.sleep(_RETRY_PAUSE_S)

    async def fetch_signature(self, signature: str) -> SignatureSpec:
        meta = await self._get(self._base + "/metadata", "model metadata")
        sig_map = meta.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
        if signature not in sig_map:
            available = ", ".join(sorted(sig_map)) or "none"
            raise SignatureNotFoundError(
                f"model '{self._label()}' has no signature '{signature}' (available: {available})"
            )
        return signature_from_json(signature, sig_map[signature])

    def build_payload(self, signature: str, inputs: Mapping[str, BuiltInput]) -> bytes:
        return encode_body(signature, inputs, self.fmt)

    def latency_caller(self) -> BlockingCall:
        """A blocking :predict over one keep-alive connection, for the one-in-flight latency loop."""
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self._host, timeout=self.deadline)
        conn = self._conn
        path = self._path + ":predict"
        headers = {"Content-Type": "application/json"}

        def predict(payload: bytes) -> bytes:
            conn.request("POST", path, body=payload, headers=headers)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                code = _HTTP_CODES.get(response.status, f"HTTP_{response.status}")
                raise RestError(code, _error_text(body))
            return body

        return predict

    def caller(self, index: int) -> Call:
        session = self._http()
        url = self._predict_url

        async def predict(payload: bytes) -> bytes:
            async with session.post(url, data=payload) as response:
                body = await response.read()
                if response.status != 200:
                    code = _HTTP_CODES.get(response.status, f"HTTP_{response.status}")
                    raise RestError(code, _error_text(body))
                return body

        return predict

    @staticmethod
    def classify(exc: BaseException) -> tuple[str, str] | None:
        if isinstance(exc, RestError):
            return exc.code, exc.message
        # TimeoutError first: aiohttp's ServerTimeoutError is also a connection error.
        if isinstance(exc, TimeoutError):
            return "DEADLINE_EXCEEDED", "no response within the deadline"
        if isinstance(exc, (aiohttp.ClientConnectionError, ConnectionError)):
            return "UNAVAILABLE", str(exc) or type(exc).__name__
        if isinstance(exc, (aiohttp.ClientError, http.client.HTTPException, OSError)):
            return "UNKNOWN", str(exc) or type(exc).__name__
        return None

    @staticmethod
    def describe_response(raw: Any) -> dict[str, dict[str, Any]]:
        body = json.loads(raw)
        outputs = body.get("outputs", body.get("predictions"))
        if not isinstance(outputs, dict):
            outputs = {"predictions" if "predictions" in body else "outputs": outputs}
        described: dict[str, dict[str, Any]] = {}
        for name, value in sorted(outputs.items()):
            try:
                described[name] = {"shape": list(np.asarray(value).shape)}
            except ValueError:
                described[name] = {"shape": None}
        return described
