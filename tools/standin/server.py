"""The TF Serving stand-in's main program and gRPC services.

Order of start-up, as TF Serving's: parse and check the flags (TensorFlow is not imported before), apply
the TensorFlow thread settings, load the models, serve gRPC (and REST when --rest_api_port > 0), log one
start line. SIGTERM or SIGINT stop both servers with a grace period; the exit code is then 0.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import threading
from concurrent import futures
from types import FrameType
from typing import Any

from . import config
from .config import STANDIN, ConfigError, Options, UsageError

log = logging.getLogger("standin")
STOP_GRACE_S = 5.0
_ENV_KEYS = ("OMP_NUM_THREADS", "KMP_AFFINITY", "KMP_BLOCKTIME", "KMP_SETTINGS")


def _spec(model_spec: Any) -> tuple[str, int | None, str]:
    choice = model_spec.WhichOneof("version_choice")
    version = model_spec.version.value if choice == "version" else None
    return model_spec.name, version, model_spec.version_label if choice == "version_label" else ""


def build_grpc(manager: Any, options: Options, host: str) -> Any:
    """A grpc.Server with PredictionService (Predict, GetModelMetadata) and ModelService (GetModelStatus)."""
    import grpc  # noqa: PLC0415 -- heavy imports only once the command line is known good
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415
    from tensorflow_serving.apis import (  # noqa: PLC0415
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    from .servable import CODES, ServingError  # noqa: PLC0415

    # Tensor::AsProtoField: TF Serving answers with the typed repeated fields, not tensor_content.
    fields = {1: "float_val", 2: "double_val", 3: "int_val", 4: "int_val", 5: "int_val", 6: "int_val",
              9: "int64_val", 10: "bool_val", 14: "half_val", 17: "int_val", 19: "half_val", 22: "uint32_val",
              23: "uint64_val", 8: "scomplex_val", 18: "dcomplex_val"}  # fmt: skip

    def as_proto_field(array: Any) -> Any:
        proto = tf.make_tensor_proto(array)
        name = fields.get(proto.dtype)
        if proto.tensor_content and name:
            flat = np.ascontiguousarray(array).ravel()
            if name == "half_val":
                flat = flat.view(np.uint16)
            elif array.dtype.kind == "c":
                flat = np.stack([flat.real, flat.imag], axis=-1).ravel()
            proto.ClearField("tensor_content")
            getattr(proto, name).extend(flat.tolist())
        return proto

    def guarded(api: str, handler: Any) -> Any:
        def call(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            code = "OK"
            try:
                return handler(request)
            except ServingError as exc:
                code = exc.code
                context.abort(grpc.StatusCode[exc.code], exc.message)
            except Exception:
                code = "UNKNOWN"
                log.exception("%s failed", api)
                raise
            finally:
                if api == "predict":
                    manager.count(request.model_spec.name, api, code)

        return call

    def predict(request: Any) -> Any:
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        spec = _spec(request.model_spec)
        servable, key, outputs = manager.predict(
            spec, request.model_spec.signature_name, inputs, list(request.output_filter)
        )
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = key
        for alias, value in outputs.items():
            response.outputs[alias].CopyFrom(as_proto_field(value))
        return response

    def metadata(request: Any) -> Any:
        if not request.metadata_field:
            raise ServingError("INVALID_ARGUMENT", "GetModelMetadataRequest must specify at least one metadata_field")
        for name in request.metadata_field:
            if name != "signature_def":
                raise ServingError("INVALID_ARGUMENT", f"Metadata field {name} is not supported")
        servable = manager.servable(*_spec(request.model_spec))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        sig_map = get_model_metadata_pb2.SignatureDefMap(signature_def=servable.signature_defs)
        response.metadata["signature_def"].Pack(sig_map)
        return response

    def status(request: Any) -> Any:
        name, version, label = _spec(request.model_spec)
        if label:
            version = manager.servable(name, None, label).version
        response = get_model_status_pb2.GetModelStatusResponse()
        states = get_model_status_pb2.ModelVersionStatus.State
        for number, state in sorted(manager.status(name, version).items()):
            entry = response.model_version_status.add(version=number, state=states.Value(state.state))
            entry.status.error_code = CODES.index(state.error_code)
            entry.status.error_message = state.error_message
        return response

    prediction = type(
        "PredictionService",
        (prediction_service_pb2_grpc.PredictionServiceServicer,),
        {"Predict": guarded("predict", predict), "GetModelMetadata": guarded("metadata", metadata)},
    )
    model = type(
        "ModelService", (model_service_pb2_grpc.ModelServiceServicer,), {"GetModelStatus": guarded("status", status)}
    )
    threads = options.grpc_max_threads or 4 * (os.cpu_count() or 1)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=_channel_arguments(options))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction(), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(model(), server)
    port = server.add_insecure_port(f"{host}:{options.port}")  # RuntimeError (or 0) when it cannot bind
    if not port:
        raise ConfigError(f"cannot bind the gRPC port {host}:{options.port}")
    if options.grpc_socket_path:
        server.add_insecure_port(f"unix:{options.grpc_socket_path}")
    server.start()
    return server, port


def _channel_arguments(options: Options) -> list[tuple[str, Any]]:
    """TF Serving's gRPC server settings, then --grpc_channel_arguments (key=value,...) on top."""
    arguments: dict[str, Any] = {
        "grpc.max_receive_message_length": -1,
        "grpc.max_send_message_length": -1,
        "grpc.so_reuseport": 0,  # a port in use must fail to bind, not be shared silently
    }
    for item in filter(None, options.grpc_channel_arguments.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        arguments[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else value.strip()
    return list(arguments.items())


def _apply_threads(options: Options) -> tuple[int, int]:
    """Set TensorFlow's intra/inter-op pools before any op runs; returns what TensorFlow reports back."""
    import tensorflow as tf  # noqa: PLC0415

    intra, inter = config.thread_settings(options)
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    return (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s.%(msecs)03d: %(levelname).1s [pinserve TF Serving stand-in] %(message)s", "%Y-%m-%d %H:%M:%S"
        )
    )
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def _fail(message: str) -> int:
    """TF Serving prints "Failed to start server. Error: ..." and exits 255 (return -1 from main)."""
    print(f"Failed to start server. Error: {message}", flush=True)
    log.error("%s: failed to start: %s", STANDIN, message)
    return 255


def main(argv: list[str]) -> int:
    _setup_logging()
    if any(arg in ("--help", "-help", "-h", "--helpfull") for arg in argv):
        print(config.usage(), end="")
        return 0
    try:
        options = config.parse_args(argv)
    except UsageError as exc:
        print(f"{exc}\n{config.usage()}", end="", flush=True)
        log.error("%s: %s", STANDIN, exc)
        return 255
    log.info("%s started with argv: %s", STANDIN, shlex.join(argv) or "(none)")
    if options.version:
        import tensorflow as tf  # noqa: PLC0415

        print(f"TensorFlow ModelServer: {STANDIN} (not TensorFlow Serving)\nTensorFlow Library: {tf.__version__}")
        return 0
    for name in options.ignored():
        value = options.values[name]
        shown = str(value).lower() if isinstance(value, bool) else value
        log.warning("--%s=%s is accepted for compatibility and has no effect in the stand-in", name, shown)
    try:
        config.check(options)
        batching = config.load_batching(options.batching_parameters_file) if options.enable_batching else None
        monitoring = config.load_monitoring(options.monitoring_config_file)
        models = config.load_models(options)
        _channel_arguments(options)
    except ConfigError as exc:
        return _fail(f"INVALID_ARGUMENT: {exc}")
    try:
        intra, inter = _apply_threads(options)
    except RuntimeError as exc:
        return _fail(f"cannot apply the thread settings: {exc}")
    return _serve(options, models, batching, monitoring, (intra, inter))


def _serve(options: Options, models: Any, batching: Any, monitoring: Any, threads: tuple[int, int]) -> int:
    import tensorflow as tf  # noqa: PLC0415

    from .batching import Batcher  # noqa: PLC0415
    from .rest_api import RestApi, start_rest  # noqa: PLC0415
    from .servable import Manager  # noqa: PLC0415

    tags = [t.strip() for t in options.saved_model_tags.split(",") if t.strip()]
    manager = Manager(models, tags, options.max_num_load_retries)
    manager.on_load = lambda s: log.info(
        "Successfully loaded servable version {name: %s version: %d}", s.name, s.version
    )
    batcher = Batcher(batching) if batching is not None else None
    manager.submit = batcher.submit if batcher is not None else None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    manager.poll()
    host = options.host
    try:
        grpc_server, grpc_port = build_grpc(manager, options, host)
    except (RuntimeError, ConfigError) as exc:
        return _fail(f"cannot serve gRPC on {host}:{options.port}: {exc}")
    log.info("Running gRPC ModelServer at %s:%d ...", host, grpc_port)
    httpd = None
    if options.rest_api_port > 0:
        try:
            httpd = start_rest(
                RestApi(manager, monitoring, options.rest_api_num_threads, batcher), host, options.rest_api_port
            )
        except OSError as exc:
            grpc_server.stop(None)
            return _fail(f"cannot serve HTTP/REST on {host}:{options.rest_api_port}: {exc.strerror}")
        log.info("Exporting HTTP/REST API at:%s:%d ...", host, options.rest_api_port)
    served = [
        f"{name}:{version}:{servable.path}"
        for name in manager.configs
        for version, servable in sorted(manager.loaded(name).items())
    ]
    env = " ".join(f"{k}={os.environ.get(k, 'unset')}" for k in _ENV_KEYS)
    log.info(
        "%s (this is not TensorFlow Serving) serving: intra_op_parallelism=%d inter_op_parallelism=%d "
        "(applied, as tf.config.threading reports them; 0 = TensorFlow's default) models=%s grpc=%s:%d rest=%s "
        "batching=%s monitoring=%s tensorflow=%s %s",
        STANDIN, threads[0], threads[1], ",".join(served) or "none-yet", host, grpc_port,
        f"{host}:{options.rest_api_port}" if httpd else "off",
        f"on {batching.describe()}" if batching else "off",
        f"prometheus:{monitoring.path}" if monitoring.prometheus else "off", tf.__version__, env,
    )  # fmt: skip
    poller = threading.Thread(
        target=manager.poll_forever, args=(options.file_system_poll_wait_seconds, stop), name="poller", daemon=True
    )
    poller.start()
    while not stop.wait(1.0):
        pass
    grpc_server.stop(STOP_GRACE_S).wait(STOP_GRACE_S + 1)
    if httpd is not None:
        httpd.shutdown()
        httpd.server_close()
    if batcher is not None:
        batcher.stop()
    log.info("%s stopped", STANDIN)
    return 0
