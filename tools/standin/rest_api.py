"""TensorFlow Serving's HTTP/REST API in the stand-in (stdlib http.server, HTTP/1.1 keep-alive).

    GET  /v1/models/NAME[/versions/V | /labels/L]             model version status
    GET  /v1/models/NAME[/versions/V | /labels/L]/metadata    signature_def metadata
    POST /v1/models/NAME[/versions/V | /labels/L]:predict     row ("instances") or columnar ("inputs")
    GET  <prometheus path>                                    metrics, when the monitoring config enables them

JSON follows TF Serving's conversions: values are cast to the signature's dtypes, {"b64": ...} carries
binary strings, string outputs whose alias ends in "_bytes" come back as {"b64": ...}. Errors are
{"error": "..."} with TF Serving's HTTP mapping of the status code (400, 404, 503...).
:classify and :regress are not implemented (501).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from .batching import Batcher
from .config import Monitoring
from .servable import Arrays, Manager, ServingError

log = logging.getLogger("standin")
_HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<what>/metadata|:predict|:classify|:regress)?$"
)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _message_json(message: Any) -> Any:
    """proto3 JSON as TF Serving writes it: field names kept, default values printed."""
    try:
        return json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    except TypeError:  # protobuf < 5.26 names the option differently
        return json_format.MessageToDict(message, preserving_proto_field_name=True, including_default_value_fields=True)


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and list(value) == ["b64"]


def _strings(value: Any, name: str) -> Any:
    if isinstance(value, list):
        return [_strings(v, name) for v in value]
    if _is_b64(value):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (ValueError, TypeError):
            raise ServingError("INVALID_ARGUMENT", f"Unable to base64 decode a value of input '{name}'") from None
    if isinstance(value, str):
        return value.encode()
    raise ServingError("INVALID_ARGUMENT", f"JSON Value: {json.dumps(value)} is not of expected type: string ({name})")


def _to_array(value: Any, info: Any, name: str) -> np.ndarray[Any, Any]:
    """A JSON value as a tensor of the signature's dtype for input `name`."""
    if info is None:  # not a signature input: Predict's check reports it
        return np.asarray(0)
    dtype = tf.dtypes.as_dtype(info.dtype)
    try:
        if dtype == tf.string:
            strings = _strings(value, name)
            array = np.empty(0, dtype=object) if strings == [] else np.array(strings, dtype=object)
            if array.dtype != object or any(isinstance(v, list) for v in array.flat):
                raise ValueError("ragged")
            return array
        raw = np.asarray(value)
    except ValueError:
        raise ServingError(
            "INVALID_ARGUMENT", f"input '{name}' is ragged: every list of one level must be as long"
        ) from None
    ok = {"f": "iuf", "c": "iuf", "i": "iu", "u": "iu", "b": "b"}.get(np.dtype(dtype.as_numpy_dtype).kind, "iuf")
    if raw.size and raw.dtype.kind not in ok:
        raise ServingError(
            "INVALID_ARGUMENT",
            f"JSON Value: {json.dumps(raw.flat[0].item() if raw.dtype.kind != 'O' else None)} of input '{name}' "
            f"is not of expected type: {dtype.name}",
        )
    return raw.astype(dtype.as_numpy_dtype)


def decode_predict(doc: Any, signature_inputs: Mapping[str, Any]) -> tuple[Arrays, bool]:
    """The inputs of a :predict body and whether it used the row ("instances") format."""
    if not isinstance(doc, dict):
        raise ServingError("INVALID_ARGUMENT", "JSON Value is not an object")
    if ("instances" in doc) == ("inputs" in doc):
        raise ServingError(
            "INVALID_ARGUMENT",
            "Missing 'inputs' or 'instances' key"
            if "inputs" not in doc
            else "Not a valid JSON object: both 'instances' and 'inputs' keys are present",
        )
    only = next(iter(signature_inputs)) if len(signature_inputs) == 1 else None
    if "inputs" in doc:
        value = doc["inputs"]
        if isinstance(value, dict) and not _is_b64(value):
            return {k: _to_array(v, signature_inputs.get(k), k) for k, v in value.items()}, False
        if only is None:
            raise ServingError("INVALID_ARGUMENT", f"the signature has {len(signature_inputs)} inputs: name them")
        return {only: _to_array(value, signature_inputs[only], only)}, False
    rows = doc["instances"]
    if not isinstance(rows, list) or not rows:
        raise ServingError("INVALID_ARGUMENT", "'instances' must be a non-empty list")
    if not (isinstance(rows[0], dict) and not _is_b64(rows[0])):
        if only is None:
            raise ServingError("INVALID_ARGUMENT", f"the signature has {len(signature_inputs)} inputs: name them")
        return {only: _to_array(rows, signature_inputs[only], only)}, True
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or _is_b64(row) or set(row) != set(rows[0]):
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Failed to process element: {index} of 'instances' list. Error: every instance must be an object "
                f"with the same named inputs as the first ({', '.join(sorted(rows[0]))})",
            )
    return {k: _to_array([row[k] for row in rows], signature_inputs.get(k), k) for k in rows[0]}, True


def _jsonable(array: np.ndarray[Any, Any], alias: str) -> Any:
    if array.dtype == object:

        def text(v: bytes) -> Any:
            if alias.endswith("_bytes"):
                return {"b64": base64.b64encode(v).decode("ascii")}
            try:
                return v.decode()
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(v).decode("ascii")}

        return np.frompyfunc(text, 1, 1)(array).tolist() if array.ndim else text(array.item())
    if array.dtype.kind == "c":
        return np.stack([array.real, array.imag], axis=-1).tolist()
    if array.dtype.kind not in "biuf":  # bfloat16 and other extension types
        return array.astype(np.float32).tolist()
    return array.tolist()


def encode_predict(outputs: Arrays, row_format: bool) -> dict[str, Any]:
    if not row_format:
        if len(outputs) == 1:
            alias, value = next(iter(outputs.items()))
            return {"outputs": _jsonable(value, alias)}
        return {"outputs": {alias: _jsonable(value, alias) for alias, value in outputs.items()}}
    if len(outputs) == 1:
        alias, value = next(iter(outputs.items()))
        return {"predictions": _jsonable(value, alias)}
    sizes = {alias: (value.shape[0] if value.ndim else None) for alias, value in outputs.items()}
    first = next(iter(sizes.values()))
    for alias, size in sizes.items():
        if size is None or size != first:
            raise ServingError(
                "INVALID_ARGUMENT", f"Tensor name: {alias} has inconsistent batch size: {size} expecting: {first}"
            )
    columns = {alias: _jsonable(value, alias) for alias, value in outputs.items()}
    return {"predictions": [{alias: column[i] for alias, column in columns.items()} for i in range(first or 0)]}


class RestApi:
    """Routes one request to the manager; returns (HTTP status, JSON or text body, content type)."""

    def __init__(self, manager: Manager, monitoring: Monitoring, threads: int, batcher: Batcher | None = None) -> None:
        self.manager = manager
        self.batcher = batcher
        self.monitoring = monitoring
        self._slots = threading.BoundedSemaphore(max(threads, 1))  # --rest_api_num_threads

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        if self.monitoring.prometheus and method == "GET" and path == self.monitoring.path:
            return 200, self.metrics().encode(), "text/plain; version=0.0.4"
        match = _PATH.match(path.split("?", 1)[0])
        model = unquote(match["name"]) if match else ""
        code = "OK"
        try:
            with self._slots:
                if match is None:
                    raise ServingError(
                        "NOT_FOUND" if not path.startswith("/v1/") else "INVALID_ARGUMENT",
                        f"Malformed request: {method} {path}",
                    )
                spec = (model, int(match["version"]) if match["version"] else None, unquote(match["label"] or ""))
                return 200, _json(self._route(method, match["what"] or "", spec, body)), "application/json"
        except ServingError as exc:
            code = exc.code
            return _HTTP_STATUS.get(exc.code, 500), _json({"error": exc.message}), "application/json"
        except Exception as exc:  # a bug in the stand-in: answer 500 rather than drop the connection
            code = "INTERNAL"
            log.exception("%s %s failed", method, path)
            return 500, _json({"error": f"{type(exc).__name__}: {exc}"}), "application/json"
        finally:
            if match and match["what"] == ":predict":
                self.manager.count(model, "predict", code)

    def _route(self, method: str, what: str, spec: Any, body: bytes) -> Any:
        name, version, _ = spec
        if method == "GET" and what == "":
            if spec[2]:
                version = self.manager.servable(*spec).version
            states = self.manager.status(name, version)
            return {
                "model_version_status": [
                    {
                        "version": str(v),
                        "state": s.state,
                        "status": {"error_code": s.error_code, "error_message": s.error_message},
                    }
                    for v, s in sorted(states.items())
                ]
            }
        if method == "GET" and what == "/metadata":
            servable = self.manager.servable(*spec)
            sig_map = get_model_metadata_pb2.SignatureDefMap(signature_def=servable.signature_defs)
            return {
                "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
                "metadata": {"signature_def": _message_json(sig_map)},
            }
        if method == "POST" and what == ":predict":
            try:
                doc = json.loads(body)
            except ValueError as exc:
                raise ServingError("INVALID_ARGUMENT", f"JSON Parse error: {exc}") from None
            signature_name = doc.get("signature_name", "") if isinstance(doc, dict) else ""
            if not isinstance(signature_name, str):
                raise ServingError("INVALID_ARGUMENT", "'signature_name' must be a string")
            _, sig = self.manager.servable(*spec).signature(signature_name)
            inputs, rows = decode_predict(doc, sig.inputs)
            _, _, outputs = self.manager.predict(spec, signature_name, inputs)
            return encode_predict(outputs, rows)
        if method == "POST" and what in (":classify", ":regress"):
            raise ServingError("UNIMPLEMENTED", f"the TF Serving stand-in implements :predict only, not {what}")
        raise ServingError("INVALID_ARGUMENT", f"Malformed request: {method} {what or 'status'}")

    def metrics(self) -> str:
        lines = ["# TYPE :tensorflow:serving:request_count counter"]
        for (model, api, status), count in sorted(self.manager.requests.items()):
            lines.append(
                f':tensorflow:serving:request_count{{model_name="{model}",api="{api}",status="{status}"}} {count}'
            )
        if self.batcher is not None:
            name = ":tensorflow:serving:batching_session:processed_batch_size"
            lines += [
                f"# TYPE {name} summary",
                f"{name}_sum {self.batcher.batched_size}",
                f"{name}_count {self.batcher.batches}",
            ]
        return "\n".join(lines) + "\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as TF Serving's REST server
    disable_nagle_algorithm = True
    server_version = "pinserve-tfserving-standin"
    api: RestApi

    def log_message(self, format: str, *args: Any) -> None:  # one line per request would drown the log
        pass

    def _serve(self, method: str) -> None:
        length = self.headers.get("Content-Length")
        if length is None and self.headers.get("Transfer-Encoding"):
            status, body, kind = 411, _json({"error": "a Content-Length is required"}), "application/json"
            self.close_connection = True
        else:
            status, body, kind = self.api.handle(method, self.path, self.rfile.read(int(length or 0)))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")


def start_rest(api: RestApi, host: str, port: int) -> ThreadingHTTPServer:
    """Bind and serve in a daemon thread; OSError when the port is taken."""
    handler = type("Handler", (_Handler,), {"api": api})
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="rest", daemon=True).start()
    return httpd
