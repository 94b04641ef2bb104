"""Command line and configuration files of the TF Serving stand-in, with TensorFlow Serving's names,
defaults and checks (tensorflow_serving/model_servers/main.cc and server.cc).

Flags take `--flag=value` or `--flag value`; booleans also `--flag` and `--noflag`. Every flag of the real
server is accepted; those the stand-in does not act on are listed as such in --help and logged when set.
`--host` is the stand-in's own (TF Serving always binds every interface). No TensorFlow import here, so
bad command lines fail fast.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

STANDIN = "pinserve TF Serving stand-in"


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Flag:
    name: str
    kind: type
    default: Any
    help: str
    effective: bool = True  # False: accepted for compatibility, no effect in the stand-in


FLAGS: tuple[Flag, ...] = (
    Flag("port", int, 8500, "gRPC port (PredictionService, ModelService)"),
    Flag("grpc_socket_path", str, "", "also serve gRPC on this UNIX socket"),
    Flag("rest_api_port", int, 0, "HTTP/REST port; 0 disables the REST API"),
    Flag("rest_api_num_threads", int, 4 * _cpus(), "REST requests processed at once"),
    Flag("rest_api_timeout_in_ms", int, 30000, "REST timeout", effective=False),
    Flag("rest_api_enable_cors_support", bool, False, "CORS headers", effective=False),
    Flag("enable_batching", bool, False, "batch Predict calls (see --batching_parameters_file)"),
    Flag("enable_per_model_batching_params", bool, False, "per-model batching files", effective=False),
    Flag("allow_version_labels_for_unavailable_models", bool, False, "labels for unloaded versions", effective=False),
    Flag("batching_parameters_file", str, "", "text-format BatchingParameters"),
    Flag("model_config_file", str, "", "text-format ModelServerConfig (read once, not reloaded)"),
    Flag("model_config_file_poll_wait_seconds", int, 0, "config reload interval", effective=False),
    Flag("model_name", str, "default", "name of the model (without --model_config_file)"),
    Flag("model_base_path", str, "", "directory holding numeric version subdirectories"),
    Flag("num_load_threads", int, 0, "model load threads", effective=False),
    Flag("num_unload_threads", int, 0, "model unload threads", effective=False),
    Flag("max_num_load_retries", int, 5, "retries of a version that failed to load (one per poll)"),
    Flag("load_retry_interval_micros", int, 60_000_000, "pause between load retries", effective=False),
    Flag("file_system_poll_wait_seconds", int, 1, "poll for new versions every N s; 0 polls once, <0 never"),
    Flag("flush_filesystem_caches", bool, True, "flush file system caches after loading", effective=False),
    Flag("tensorflow_session_parallelism", int, 0, "intra and inter op threads (when the two below are 0)"),
    Flag("tensorflow_session_config_file", str, "", "ConfigProto file", effective=False),
    Flag("tensorflow_intra_op_parallelism", int, 0, "threads inside one op; 0: TensorFlow's default"),
    Flag("tensorflow_inter_op_parallelism", int, 0, "ops run in parallel; 0: TensorFlow's default"),
    Flag("use_alts_credentials", bool, False, "ALTS", effective=False),
    Flag("ssl_config_file", str, "", "TLS for gRPC", effective=False),
    Flag("platform_config_file", str, "", "platform configuration", effective=False),
    Flag("per_process_gpu_memory_fraction", float, 0.0, "GPU memory fraction", effective=False),
    Flag("saved_model_tags", str, "serve", "comma-separated MetaGraphDef tags to load"),
    Flag("grpc_channel_arguments", str, "", "comma-separated key=value gRPC server arguments"),
    Flag("grpc_max_threads", int, 0, "gRPC worker threads; 0: 4 per CPU"),
    Flag("enable_model_warmup", bool, True, "replay assets.extra/tf_serving_warmup_requests", effective=False),
    Flag("num_request_iterations_for_warmup", int, 1, "warm-up repetitions", effective=False),
    Flag("version", bool, False, "print the version and exit"),
    Flag("monitoring_config_file", str, "", "text-format MonitoringConfig (Prometheus on the REST port)"),
    Flag("remove_unused_fields_from_bundle_metagraph", bool, True, "trim the MetaGraphDef", effective=False),
    Flag("prefer_tflite_model", bool, False, "TFLite", effective=False),
    Flag("num_tflite_pools", int, 1, "TFLite", effective=False),
    Flag("num_tflite_interpreters_per_pool", int, 1, "TFLite", effective=False),
    Flag("enable_signature_method_name_check", bool, False, "check signature method names", effective=False),
    Flag("xla_cpu_compilation_enabled", bool, False, "XLA JIT on CPU", effective=False),
    Flag("enable_profiler", bool, True, "profiler service", effective=False),
    Flag("thread_pool_factory_config_file", str, "", "thread pool factory", effective=False),
    Flag("mixed_precision", str, "", "mixed precision", effective=False),
    Flag("skip_initialize_tpu", bool, False, "TPU", effective=False),
    Flag("enable_grpc_healthcheck_service", bool, False, "gRPC health service", effective=False),
    Flag("host", str, "0.0.0.0", "[stand-in only] address both servers bind (TF Serving binds all)"),
)
_BY_NAME = {f.name: f for f in FLAGS}
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


class UsageError(Exception):
    """A bad command line: TF Serving prints the message and its usage, and exits 255."""


class ConfigError(Exception):
    """The server cannot start with these settings (TF Serving: "Failed to start server. Error: ...")."""


@dataclass(frozen=True)
class Options:
    values: dict[str, Any]
    given: tuple[str, ...]  # flag names set on the command line, in order

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def ignored(self) -> list[str]:
        return [name for name in self.given if not _BY_NAME[name].effective]


def usage(program: str = "tensorflow_model_server") -> str:
    lines = [
        f"usage: {program} --port=8500 [--rest_api_port=8501] --model_name=NAME --model_base_path=DIR [flags]",
        f"{STANDIN}: test tooling that serves SavedModels with real TensorFlow behind TensorFlow Serving's",
        "flags, gRPC services and REST API. It is not TensorFlow Serving. Flags (--flag=value or --flag value):",
    ]
    for f in FLAGS:
        note = "" if f.effective else " [accepted, no effect in the stand-in]"
        default = str(f.default).lower() if f.kind is bool else repr(f.default) if f.kind is str else f.default
        lines.append(f"\t--{f.name}={default}\t{f.kind.__name__}\t{f.help}{note}")
    return "\n".join(lines) + "\n"


def _convert(flag: Flag, raw: str) -> Any:
    try:
        if flag.kind is bool:
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ValueError(raw)
        return flag.kind(raw)
    except ValueError:
        raise UsageError(f"Illegal value for flag --{flag.name}: {raw!r} is not a valid {flag.kind.__name__}") from None


def parse_args(argv: list[str]) -> Options:
    """Parse like TF Serving; raises UsageError naming the first unknown argument or bad value."""
    values = {f.name: f.default for f in FLAGS}
    given: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        body = arg[2:] if arg.startswith("--") else arg[1:] if arg.startswith("-") else ""
        name, eq, raw = body.partition("=")
        flag = _BY_NAME.get(name)
        if flag is None and not eq and name.startswith("no") and name[2:] in _BY_NAME:
            flag, eq, raw = _BY_NAME[name[2:]], "=", "false"
            flag = flag if flag.kind is bool else None
        if flag is None or not name:
            raise UsageError(f"unknown argument: {arg}")
        if not eq:
            if flag.kind is bool:
                raw = "true"
                if i < len(argv) and argv[i].lower() in _TRUE + _FALSE:
                    raw = argv[i]
                    i += 1
            elif i < len(argv):
                raw = argv[i]
                i += 1
            else:
                raise UsageError(f"flag --{name} needs a value")
        values[flag.name] = _convert(flag, raw)
        given.append(flag.name)
    return Options(values, tuple(given))


def check(options: Options) -> None:
    """The cross-flag checks TF Serving's Server::BuildAndStart makes."""
    if not options.model_base_path and not options.model_config_file:
        raise ConfigError("Both server_options.model_base_path and server_options.model_config_file are empty!")
    if options.rest_api_port and options.rest_api_port == options.port:
        raise ConfigError("server_options.grpc_port cannot be the same as server_options.http_port")
    if options.batching_parameters_file and not options.enable_batching:
        raise ConfigError(
            "server_options.batching_parameters_file is set without setting server_options.enable_batching to true."
        )
    if (
        options.tensorflow_session_parallelism > 0
        and options.tensorflow_intra_op_parallelism > 0
        and options.tensorflow_inter_op_parallelism > 0
    ):
        raise ConfigError(
            "Either configure server_options.tensorflow_session_parallelism or "
            "(server_options.tensorflow_intra_op_parallelism, server_options.tensorflow_inter_op_parallelism). "
            "Both cannot be set."
        )
    for name in ("port", "rest_api_port"):
        if not 0 <= options.values[name] <= 65535:
            raise ConfigError(f"--{name}={options.values[name]} is not a port number")


def thread_settings(options: Options) -> tuple[int, int]:
    """(intra, inter) as TF Serving derives them: session_parallelism applies when it is set."""
    if options.tensorflow_session_parallelism > 0:
        return options.tensorflow_session_parallelism, options.tensorflow_session_parallelism
    return options.tensorflow_intra_op_parallelism, options.tensorflow_inter_op_parallelism


# --- text-format configuration files --------------------------------------------------------------------
# session_bundle_config.proto and monitoring_config.proto are not in the tensorflow-serving-api wheel, so
# their messages are declared here (same names and types) and parsed by protobuf's own text_format.

_I64 = ".google.protobuf.Int64Value"
_MESSAGES: dict[str, list[tuple[str, str, bool]]] = {  # message -> [(field, type, repeated)]
    "BatchingParameters": [
        ("max_batch_size", _I64, False),
        ("batch_timeout_micros", _I64, False),
        ("max_enqueued_batches", _I64, False),
        ("num_batch_threads", _I64, False),
        ("thread_pool_name", ".google.protobuf.StringValue", False),
        ("allowed_batch_sizes", "int64", True),
        ("pad_variable_length_inputs", "bool", False),
        ("enable_large_batch_splitting", ".google.protobuf.BoolValue", False),
        ("max_execution_batch_size", _I64, False),
    ],
    "PrometheusConfig": [("enable", "bool", False), ("path", "string", False)],
    "MonitoringConfig": [("prometheus_config", ".tensorflow.serving.PrometheusConfig", False)],
}
_SCALARS = {
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
}
_classes: dict[str, Any] = {}


def _message(name: str) -> Any:
    if not _classes:
        pool = descriptor_pool.DescriptorPool()
        wrappers = descriptor_pb2.FileDescriptorProto()
        wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
        pool.Add(wrappers)
        file = descriptor_pb2.FileDescriptorProto(
            name="pinserve_standin_config.proto",
            package="tensorflow.serving",
            syntax="proto3",
            dependency=["google/protobuf/wrappers.proto"],
        )
        for message, fields in _MESSAGES.items():
            msg = file.message_type.add(name=message)
            for number, (fname, ftype, repeated) in enumerate(fields, 1):
                proto = msg.field.add(name=fname, number=number)
                proto.label = proto.LABEL_REPEATED if repeated else proto.LABEL_OPTIONAL
                if ftype.startswith("."):
                    proto.type, proto.type_name = proto.TYPE_MESSAGE, ftype
                else:
                    proto.type = _SCALARS[ftype]
        pool.Add(file)
        for message in _MESSAGES:
            _classes[message] = message_factory.GetMessageClass(
                pool.FindMessageTypeByName(f"tensorflow.serving.{message}")
            )
    return _classes[name]()


def _parse_text(path: str, message: Any, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            text_format.Parse(handle.read(), message)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    except text_format.ParseError as exc:
        raise ConfigError(f"{what} {path} is not a valid text-format {type(message).__name__}: {exc}") from None
    return message


@dataclass(frozen=True)
class Batching:
    """BatchingParameters with the defaults of TF's BasicBatchScheduler::Options where a field is unset."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=_cpus)
    thread_pool_name: str = "batch_threads"
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False

    def describe(self) -> str:
        sizes = ",".join(map(str, self.allowed_batch_sizes)) or "any"
        return (
            f"max_batch_size={self.max_batch_size} batch_timeout_micros={self.batch_timeout_micros} "
            f"num_batch_threads={self.num_batch_threads} max_enqueued_batches={self.max_enqueued_batches} "
            f"allowed_batch_sizes={sizes} pad_variable_length_inputs={str(self.pad_variable_length_inputs).lower()}"
        )


def load_batching(path: str) -> Batching:
    """Parse and validate a batching parameters file ("" = defaults, as --enable_batching alone gives)."""
    if not path:
        return Batching(thread_pool_name="model_server_batch_threads")
    proto = _parse_text(path, _message("BatchingParameters"), "batching parameters file")
    set_fields = {f.name: v for f, v in proto.ListFields()}
    wrapped = {k: v.value for k, v in set_fields.items() if hasattr(v, "value")}
    scalars = (
        "max_batch_size",
        "batch_timeout_micros",
        "max_enqueued_batches",
        "num_batch_threads",
        "thread_pool_name",
    )
    result = Batching(
        **{k: wrapped[k] for k in scalars if k in wrapped},
        allowed_batch_sizes=tuple(proto.allowed_batch_sizes),
        pad_variable_length_inputs=proto.pad_variable_length_inputs,
        enable_large_batch_splitting=wrapped.get("enable_large_batch_splitting", False),
    )
    for name in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
        if getattr(result, name) < 1:
            raise ConfigError(f"{path}: {name} must be positive; was {getattr(result, name)}")
    if result.batch_timeout_micros < 0:
        raise ConfigError(f"{path}: batch_timeout_micros must be non-negative; was {result.batch_timeout_micros}")
    sizes = result.allowed_batch_sizes
    if sizes:
        if any(b <= a for a, b in itertools.pairwise(sizes)) or sizes[0] < 1:
            raise ConfigError(f"{path}: allowed_batch_sizes entries must be positive and monotonically increasing")
        if sizes[-1] != result.max_batch_size and not result.enable_large_batch_splitting:
            raise ConfigError(
                f"{path}: the last entry in allowed_batch_sizes must match max_batch_size; "
                f"last entry was {sizes[-1]}; expected {result.max_batch_size}"
            )
    return result


@dataclass(frozen=True)
class Monitoring:
    prometheus: bool = False
    path: str = "/monitoring/prometheus/metrics"


def load_monitoring(path: str) -> Monitoring:
    if not path:
        return Monitoring()
    proto = _parse_text(path, _message("MonitoringConfig"), "monitoring config file")
    prometheus = proto.prometheus_config
    return Monitoring(prometheus.enable, prometheus.path or Monitoring.path)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: str
    policy: str = "latest"  # latest | all | specific
    versions: tuple[int, ...] = (1,)  # latest: (num_versions,); specific: the versions
    labels: dict[str, int] = field(default_factory=dict)


def load_models(options: Options) -> list[ModelConfig]:
    """The models to serve: --model_config_file's model_config_list, else --model_name/--model_base_path."""
    if not options.model_config_file:
        return [ModelConfig(options.model_name, options.model_base_path)]
    from tensorflow_serving.config import model_server_config_pb2  # noqa: PLC0415 -- only when configured

    proto = _parse_text(options.model_config_file, model_server_config_pb2.ModelServerConfig(), "model config file")
    if proto.WhichOneof("config") != "model_config_list" or not proto.model_config_list.config:
        raise ConfigError(f"{options.model_config_file}: the stand-in needs a non-empty model_config_list")
    models = []
    for config in proto.model_config_list.config:
        if config.model_platform not in ("", "tensorflow"):
            raise ConfigError(f"model {config.name}: platform {config.model_platform!r} is not supported")
        policy = config.model_version_policy.WhichOneof("policy_choice") or "latest"
        versions: tuple[int, ...] = (1,)
        if policy == "latest":
            versions = (config.model_version_policy.latest.num_versions or 1,)
        elif policy == "specific":
            versions = tuple(config.model_version_policy.specific.versions)
        models.append(ModelConfig(config.name, config.base_path, policy, versions, dict(config.version_labels)))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"{options.model_config_file}: model names repeat: {names}")
    return models
