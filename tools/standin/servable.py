"""Models as the stand-in serves them: versions found on disk, SavedModels loaded with real TensorFlow, and
Predict's checks and execution, with TensorFlow Serving's status codes and messages.

Versions are the numeric subdirectories of a model's base path; the version policy (latest N by default)
picks which are served, and a poller loads new ones and unloads old ones as TF Serving's file system
source does. Metadata is the MetaGraphDef's signature_def map read from saved_model.pb, as TF Serving
reports it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2

from .config import ModelConfig

log = logging.getLogger("standin")
DEFAULT_SIGNATURE = "serving_default"
# tensorflow/core/protobuf/error_codes.proto, numbered as grpc.StatusCode is.
CODES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip
_C_NAMES = {"float32": "float", "float64": "double", "float16": "half"}  # TF's DataTypeString spelling

Arrays = dict[str, np.ndarray[Any, Any]]
Runner = Callable[[Arrays], Arrays]
Submit = Callable[[Hashable, Runner, Arrays], Arrays]
Spec = tuple[str, "int | None", str]  # ModelSpec: name, version (None: latest), version label


class ServingError(Exception):
    """A request failure: `code` is a canonical status name (NOT_FOUND...), `message` what TF Serving says."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _type_name(enum: int) -> str:
    name = str(tf.dtypes.as_dtype(enum).name)
    return _C_NAMES.get(name, name)


def _shape_text(shape: Any) -> str:
    return "<unknown>" if shape.unknown_rank else "[" + ",".join(str(d.size) for d in shape.dim) + "]"


class Servable:
    """One loaded version of one model."""

    def __init__(self, name: str, version: int, path: str, tags: Sequence[str]) -> None:
        self.name, self.version, self.path = name, version, path
        self.signature_defs = _read_signature_defs(path, tags)
        self._module = tf.saved_model.load(path, tags=list(tags))
        signatures = self._module.signatures
        self._functions = {key: signatures[key] for key in self.signature_defs if key in signatures}

    def signature(self, name: str) -> tuple[str, Any]:
        key = name or DEFAULT_SIGNATURE
        if key not in self._functions:
            raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{key}" not found.')
        return key, self.signature_defs[key]

    def check(
        self, signature_name: str, inputs: Mapping[str, Any], output_filter: Sequence[str]
    ) -> tuple[str, list[str]]:
        """Predict's request checks (predict_util.cc); returns (signature key, output aliases to return)."""
        key, sig = self.signature(signature_name)
        sent, wanted = set(inputs), set(sig.inputs)
        if sent != wanted:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"input size does not match signature: {len(sent)}!={len(wanted)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
                f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
                f"Missing but required: {{{','.join(sorted(wanted - sent))}}}.",
            )
        for alias in output_filter:
            if alias not in sig.outputs:
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                    f"{{{','.join(sorted(sig.outputs))}}}.",
                )
        if len(set(output_filter)) != len(output_filter):
            raise ServingError(
                "INVALID_ARGUMENT", f"duplicate output tensor alias in output_filter: {list(output_filter)}"
            )
        for index, name in enumerate(sorted(sig.inputs)):
            info, array = sig.inputs[name], inputs[name]
            got = tf.dtypes.as_dtype(array.dtype)
            if got.as_datatype_enum != info.dtype:
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"Expects arg[{index}] to be {_type_name(info.dtype)} but {_C_NAMES.get(got.name, got.name)} "
                    f"is provided (input '{name}')",
                )
            dims = [d.size for d in info.tensor_shape.dim]
            if not info.tensor_shape.unknown_rank and (
                len(dims) != array.ndim or any(d not in (-1, n) for d, n in zip(dims, array.shape, strict=True))
            ):
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"input '{name}' has shape [{','.join(map(str, array.shape))}], which is not compatible with "
                    f"the signature's {_shape_text(info.tensor_shape)}",
                )
        return key, list(output_filter) or sorted(sig.outputs)

    def runner(self, key: str, outputs: Sequence[str]) -> Runner:
        """Runs signature `key` with real TensorFlow and returns `outputs` as numpy arrays."""
        function = self._functions[key]

        def run(inputs: Arrays) -> Arrays:
            try:
                result = function(**{name: tf.constant(value) for name, value in inputs.items()})
            except tf.errors.OpError as exc:
                code = CODES[exc.error_code] if 0 < exc.error_code < len(CODES) else "UNKNOWN"
                raise ServingError(code, exc.message) from None
            except (TypeError, ValueError) as exc:
                raise ServingError("INVALID_ARGUMENT", str(exc)) from None
            return {alias: result[alias].numpy() for alias in outputs}

        return run


def _read_signature_defs(path: str, tags: Sequence[str]) -> dict[str, Any]:
    saved = saved_model_pb2.SavedModel()
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        with open(os.path.join(path, "saved_model.pb"), "rb") as handle:
            saved.ParseFromString(handle.read())
    else:
        with open(os.path.join(path, "saved_model.pbtxt"), encoding="utf-8") as handle:
            text_format.Parse(handle.read(), saved)
    for meta_graph in saved.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == set(tags):
            return dict(meta_graph.signature_def)
    raise ServingError(
        "NOT_FOUND", f"MetaGraphDef associated with tags '{','.join(tags)}' could not be found in SavedModel"
    )


def versions_on_disk(base_path: str) -> dict[int, str]:
    """Numeric subdirectories holding a SavedModel, as TF Serving's file system source finds them."""
    try:
        entries = os.listdir(base_path)
    except OSError:
        return {}
    found = {}
    for entry in entries:
        path = os.path.join(base_path, entry)
        if entry.isdigit() and any(
            os.path.exists(os.path.join(path, f)) for f in ("saved_model.pb", "saved_model.pbtxt")
        ):
            found[int(entry)] = path
    return found


@dataclass(frozen=True)
class VersionState:
    state: str  # START LOADING AVAILABLE UNLOADING END, as ModelVersionStatus.State names them
    error_code: str = "OK"
    error_message: str = ""


class Manager:
    """The served models: lookups by ModelSpec, version states, and the file system poller."""

    def __init__(self, models: Sequence[ModelConfig], tags: Sequence[str], load_retries: int = 5) -> None:
        self.configs = {m.name: m for m in models}
        self.tags = tuple(tags)
        self.load_retries = load_retries  # --max_num_load_retries: a failed version is tried again, this often
        self._failures: Counter[tuple[str, int]] = Counter()
        self._loaded: dict[str, dict[int, Servable]] = {m.name: {} for m in models}
        self._states: dict[str, dict[int, VersionState]] = {m.name: {} for m in models}
        self._lock = threading.Lock()
        self.on_load: Callable[[Servable], None] = lambda servable: None
        self.submit: Submit | None = None  # the batcher's, when --enable_batching
        self.requests: Counter[tuple[str, str, str]] = Counter()  # (model, api, status) -> count

    def count(self, model: str, api: str, code: str) -> None:
        with self._lock:
            self.requests[(model, api, code)] += 1

    def predict(
        self, spec: Spec, signature_name: str, inputs: Arrays, output_filter: Sequence[str] = ()
    ) -> tuple[Servable, str, Arrays]:
        """Check, then run (through the batcher when batching); returns (servable, signature key, outputs)."""
        servable = self.servable(*spec)
        key, outputs = servable.check(signature_name, inputs, output_filter)
        run = servable.runner(key, outputs)
        if self.submit is None:
            return servable, key, run(inputs)
        return servable, key, self.submit((servable.name, servable.version, key, tuple(outputs)), run, inputs)

    def servable(self, name: str, version: int | None = None, label: str = "") -> Servable:
        """The servable a ModelSpec names; the latest loaded version when none is given."""
        loaded = self._loaded.get(name, {})
        if label:
            labels = self.configs[name].labels if name in self.configs else {}
            if label not in labels:
                raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
            version = labels[label]
        if version is None:
            if not loaded:
                raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
            return loaded[max(loaded)]
        if version not in loaded:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Specific({name}, {version})")
        return loaded[version]

    def loaded(self, name: str) -> dict[int, Servable]:
        return dict(self._loaded.get(name, {}))

    def status(self, name: str, version: int | None = None) -> dict[int, VersionState]:
        states = self._states.get(name, {})
        if not states:
            raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
        if version is None:
            return dict(states)
        if version not in states:
            raise ServingError("NOT_FOUND", f"Could not find version {version} of model {name}")
        return {version: states[version]}

    def _wanted(self, config: ModelConfig, on_disk: Mapping[int, str]) -> list[int]:
        if config.policy == "all":
            return sorted(on_disk)
        if config.policy == "specific":
            return sorted(v for v in config.versions if v in on_disk)
        return sorted(on_disk)[-config.versions[0] :]

    def _set_state(self, name: str, version: int, state: VersionState) -> None:
        with self._lock:
            self._states[name] = {**self._states[name], version: state}

    def poll(self) -> None:
        """Load the versions the policy wants that are not loaded yet, then unload the others."""
        for name, config in self.configs.items():
            on_disk = versions_on_disk(config.base_path)
            if not on_disk and not self._loaded[name]:
                log.warning("no versions of servable %s found under base path %s", name, config.base_path)
            wanted = self._wanted(config, on_disk)
            for version in wanted:
                if version in self._loaded[name] or self._failures[(name, version)] > self.load_retries:
                    continue
                self._load(name, version, on_disk[version])
            for version in [v for v in self._loaded[name] if v not in wanted]:
                self._set_state(name, version, VersionState("UNLOADING"))
                with self._lock:
                    self._loaded[name] = {v: s for v, s in self._loaded[name].items() if v != version}
                self._set_state(name, version, VersionState("END"))
                log.info("unloaded servable version {name: %s version: %d}", name, version)

    def _load(self, name: str, version: int, path: str) -> None:
        self._set_state(name, version, VersionState("LOADING"))
        log.info("loading servable version {name: %s version: %d} from %s", name, version, path)
        try:
            servable = Servable(name, version, path, self.tags)
        except Exception as exc:  # a bad SavedModel must not stop the server: report it in the status
            message = exc.message if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
            log.error("loading servable version {name: %s version: %d} failed: %s", name, version, message)
            self._set_state(name, version, VersionState("END", "UNKNOWN", message))
            self._failures[(name, version)] += 1
            return
        with self._lock:
            self._loaded[name] = {**self._loaded[name], version: servable}
        self._set_state(name, version, VersionState("AVAILABLE"))
        self.on_load(servable)

    def poll_forever(self, interval_s: int, stop: threading.Event) -> None:
        """TF Serving's --file_system_poll_wait_seconds: <= 0 polls once (at start) and never again."""
        while interval_s > 0 and not stop.wait(interval_s):
            try:
                self.poll()
            except Exception:  # keep polling; the next round may succeed
                log.exception("polling the model base paths failed")
