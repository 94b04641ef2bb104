"""Model formats besides SavedModel: find the model file, convert it to a SavedModel for TF Serving.

``frozenGraph``: a GraphDef with its variables folded into constants (.pb, or .pbtxt). It is imported
into a TF1 graph and written with the SavedModel builder; the ``serving_default`` signature maps each
key the user chose to a tensor of that graph (``--input ImageTensor=ImageTensor:0``).
``keras``: a Keras model file (.h5; .keras too), loaded without its compiled losses and metrics and
exported with a ``serving_default`` signature whose inputs and shapes are the model's own.

TensorFlow is imported only here and only when converting: the operator image does not carry it, the
bench image (the init container's image for these formats) does. Every failure is a
``ModelConvertError`` with one line saying what to fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from pinserve.fetch.errors import (
    AmbiguousModelFileError,
    InvalidArgumentError,
    ModelConvertError,
    NoModelFileError,
    PathNotFoundError,
)

SAVED_MODEL = "savedModel"
FROZEN_GRAPH = "frozenGraph"
KERAS = "keras"
FORMATS = (SAVED_MODEL, FROZEN_GRAPH, KERAS)
# The model files of each format that converts; the first suffix is the usual one.
SUFFIXES: dict[str, tuple[str, ...]] = {FROZEN_GRAPH: (".pb", ".pbtxt"), KERAS: (".h5", ".hdf5", ".keras")}
SIGNATURE = "serving_default"
_NOT_FROZEN_GRAPHS = frozenset({"saved_model.pb", "saved_model.pbtxt", "fingerprint.pb"})
_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")
_LISTED = 12


def parse_pairs(values: Iterable[str], flag: str) -> dict[str, str]:
    """``KEY=TENSOR`` options as a dict; each key once."""
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, tensor = value.partition("=")
        key, tensor = key.strip(), tensor.strip()
        if not sep or not key or not tensor:
            raise InvalidArgumentError(f"{flag} {value!r} must be KEY=TENSOR, e.g. {flag} ImageTensor=ImageTensor:0")
        if key in pairs:
            raise InvalidArgumentError(f"{flag} names the signature key {key!r} twice")
        pairs[key] = tensor
    return pairs


def check_options(model_format: str, inputs: Mapping[str, str], outputs: Mapping[str, str]) -> None:
    if model_format not in FORMATS:
        raise InvalidArgumentError(f"format {model_format!r} must be one of {', '.join(FORMATS)}")
    if model_format == FROZEN_GRAPH:
        missing = [flag for flag, given in (("--input", inputs), ("--output", outputs)) if not given]
        if missing:
            raise InvalidArgumentError(
                f"format frozenGraph needs {' and '.join(missing)} KEY=TENSOR: a GraphDef has no signature, "
                "so name the tensors to feed and fetch (e.g. --input ImageTensor=ImageTensor:0 "
                "--output SemanticPredictions=SemanticPredictions:0)")
        for key in (*inputs, *outputs):
            if not _KEY.match(key):
                raise InvalidArgumentError(f"signature key {key!r} must be letters, digits, '_', '.', '/', '-'")
    elif inputs or outputs:
        raise InvalidArgumentError(f"--input/--output apply to format frozenGraph only; a {model_format} "
                                   "model brings its own signature")


def uri_names_model_file(uri: str, model_format: str) -> bool:
    """Whether the URI is the model file itself (not an archive holding it)."""
    name = PurePosixPath(urlsplit(uri).path).name.lower()
    return model_format in SUFFIXES and name.endswith(SUFFIXES[model_format])


def clean_file_path(path: str) -> str:
    """spec.model.path for a model file: relative, no '..'; '' for the archive root."""
    text = path.strip()
    pure = PurePosixPath(text)
    if pure.is_absolute() or ".." in pure.parts:
        raise InvalidArgumentError(f"path {path!r} must be relative to the archive root and must not contain '..'")
    return "" if str(pure) in ("", ".") else str(pure)


def _listing(items: list[str]) -> str:
    return ", ".join(items[:_LISTED]) + (f" and {len(items) - _LISTED} more" if len(items) > _LISTED else "")


def _candidates(root: Path, model_format: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            lower = name.lower()
            if lower.endswith(SUFFIXES[model_format]) and lower not in _NOT_FROZEN_GRAPHS:
                found.append((Path(dirpath) / name).relative_to(root).as_posix())
    return found


def select_model_file(root: Path, path: str, model_format: str, uri: str) -> tuple[Path, str]:
    """(file, its path relative to root): the file ``path`` names, or the only model file under the
    directory it names (the archive root for '')."""
    what = f"{'/'.join(SUFFIXES[model_format])} file"
    target = root / path if path else root
    real, base = os.path.realpath(target), os.path.realpath(root)
    if real != base and not real.startswith(base + os.sep):
        raise PathNotFoundError(f"path {path!r} leaves the archive")
    if target.is_file():
        return target, path
    if not target.is_dir():
        elsewhere = _candidates(root, model_format)
        hint = f"; {what}s in {uri}: {_listing(elsewhere)}" if elsewhere else ""
        raise PathNotFoundError(f"path {path!r} does not exist in the archive{hint} (set spec.model.path to one)")
    found = _candidates(target, model_format)
    where = f"{path!r} in {uri}" if path else uri
    if not found:
        top = sorted(p.name + ("/" if p.is_dir() else "") for p in target.iterdir())
        raise NoModelFileError(f"{where} holds no {what} for format {model_format} "
                               f"(it holds: {_listing(top) or 'nothing'})")
    if len(found) > 1:
        raise AmbiguousModelFileError(f"{where} holds {len(found)} {what}s: {_listing(found)}; "
                                      "set spec.model.path to the one to convert")
    rel = f"{path}/{found[0]}" if path else found[0]
    return root / rel, rel


def _tensorflow(model_format: str) -> Any:
    try:
        import tensorflow as tf  # noqa: PLC0415  (seconds to import, and only the bench image has it)
    except ImportError:
        raise ModelConvertError(
            f"format {model_format} is converted with TensorFlow, which is not installed here: run "
            "`pinserve fetch-model` from the bench image (pinserve/bench), as the operator does") from None
    return tf


def convert(model_format: str, model_file: Path, out_dir: Path, *, inputs: Mapping[str, str],
            outputs: Mapping[str, str], log: Callable[[str], None]) -> str:
    """Write a SavedModel converted from ``model_file`` to ``out_dir`` (which must not exist); a
    one-line description of its serving_default signature."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = _tensorflow(model_format)
    try:
        if model_format == FROZEN_GRAPH:
            return _frozen_graph(tf, model_file, out_dir, inputs, outputs)
        signature = _keras(tf, model_file, out_dir)
        _clear_jit_compile(out_dir)
        note = _channels_first_note(out_dir)
        if note:
            log(note)
        return signature
    except ModelConvertError:
        raise
    except Exception as err:  # TensorFlow's errors are many and untyped: each one is a failed conversion
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ModelConvertError(f"converting {model_file.name} ({model_format}) failed: "
                                f"{type(err).__name__}: {first[:600]}") from None


# -- frozen graphs ----------------------------------------------------------------------------------


def _read_graph_def(tf: Any, model_file: Path) -> Any:
    data = model_file.read_bytes()
    graph_def = tf.compat.v1.GraphDef()
    try:
        if model_file.name.lower().endswith(".pbtxt"):
            from google.protobuf import text_format  # noqa: PLC0415

            text_format.Parse(data.decode("utf-8"), graph_def)
        else:
            graph_def.ParseFromString(data)
    except Exception as err:
        raise ModelConvertError(f"{model_file.name} is not a TensorFlow GraphDef ({len(data)} bytes): "
                                f"{type(err).__name__}: {err}") from None
    if not graph_def.node:
        raise ModelConvertError(f"{model_file.name} holds an empty GraphDef (no nodes): is it really a frozen graph?")
    return graph_def


def _describe(tensor: Any) -> str:
    dims = tensor.shape.as_list() if tensor.shape.rank is not None else None
    shape = "?" if dims is None else "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"
    return f"{tensor.name} ({tensor.dtype.name} {shape})"


def _tensor(graph: Any, key: str, name: str, role: str, hints: Callable[[], list[str]]) -> Any:
    full = name if ":" in name else f"{name}:0"
    try:
        return graph.get_tensor_by_name(full)
    except (KeyError, ValueError):
        pass
    listed = hints()
    known = f"; the graph's {'placeholders' if role == 'input' else 'unconsumed outputs'}: {_listing(listed)}" \
        if listed else ""
    raise ModelConvertError(f"{role} {key}: tensor {full!r} is not in the graph{known}")


def _frozen_graph(tf: Any, model_file: Path, out_dir: Path, inputs: Mapping[str, str],
                  outputs: Mapping[str, str]) -> str:
    graph_def = _read_graph_def(tf, model_file)
    graph = tf.Graph()
    with graph.as_default():
        try:
            tf.compat.v1.import_graph_def(graph_def, name="")
        except Exception as err:  # an op this TensorFlow lacks, a malformed node
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelConvertError(f"{model_file.name} cannot be imported by TensorFlow {tf.__version__}: "
                                    f"{first[:600]}") from None

    def placeholders() -> list[str]:
        return [_describe(op.outputs[0]) for op in graph.get_operations()
                if op.type in ("Placeholder", "PlaceholderWithDefault")]

    def sinks() -> list[str]:
        consumed = {t.name for op in graph.get_operations() for t in op.inputs}
        return [_describe(t) for op in graph.get_operations() for t in op.outputs
                if t.name not in consumed and op.type not in ("Const", "NoOp", "Assert")]

    feeds = {key: _tensor(graph, key, name, "input", placeholders) for key, name in inputs.items()}
    fetches = {key: _tensor(graph, key, name, "output", sinks) for key, name in outputs.items()}
    saved_model = tf.compat.v1.saved_model
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        signature = saved_model.predict_signature_def(inputs=feeds, outputs=fetches)
        builder = saved_model.Builder(str(out_dir))
        builder.add_meta_graph_and_variables(session, [saved_model.SERVING], signature_def_map={SIGNATURE: signature},
                                             strip_default_attrs=True)
        builder.save()
    described = ", ".join(f"{k}={_describe(t)}" for k, t in feeds.items())
    return f"{SIGNATURE}: inputs {described} -> outputs {', '.join(f'{k}={_describe(t)}' for k, t in fetches.items())}"


# -- Keras ----------------------------------------------------------------------------------------


def _keras_module() -> Any:
    import keras  # type: ignore[import-untyped]  # noqa: PLC0415  (Keras 3 ships with TensorFlow 2.16+)

    return keras


def _load_keras(model_file: Path) -> Any:
    keras = _keras_module()
    try:
        return keras.models.load_model(str(model_file), compile=False)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = ""
        if "model config" in first.lower():
            hint = (" (the file holds weights only, as model.save_weights writes them: build the model with its "
                    "code, load the weights and export a SavedModel there)")
        elif "unknown" in first.lower() or "custom" in first.lower():
            hint = (" (a custom layer or function: the file needs the code that defined it, so export a "
                    "SavedModel where that code lives)")
        raise ModelConvertError(f"{model_file.name} cannot be loaded as a Keras model: "
                                f"{type(err).__name__}: {first[:500]}{hint}") from None


def _keras(tf: Any, model_file: Path, out_dir: Path) -> str:
    keras = _keras_module()
    model = _load_keras(model_file)
    inputs = list(getattr(model, "inputs", None) or [])
    if not inputs:
        raise ModelConvertError(f"{model_file.name}: the Keras model has no defined inputs (a subclassed model "
                                "without a build shape); export it as a SavedModel instead")
    specs = [tf.TensorSpec([None, *list(t.shape)[1:]], t.dtype, name=_input_name(t, i)) for i, t in enumerate(inputs)]
    names = [str(n) for n in (getattr(model, "output_names", None) or [])]

    def serve(*args: Any) -> dict[str, Any]:
        result = model(args[0] if len(args) == 1 else list(args), training=False)
        if isinstance(result, dict):
            return dict(result)
        flat = list(result) if isinstance(result, list | tuple) else [result]
        keys = names if len(names) == len(flat) else [f"output_{i}" for i in range(len(flat))]
        return dict(zip(keys, flat, strict=True))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, serve, input_signature=specs)
    archive.write_out(str(out_dir), verbose=False)
    described = ", ".join(f"{s.name}={s.dtype.name} [{','.join('-1' if d is None else str(d) for d in s.shape)}]"
                          for s in specs)
    return f"{SIGNATURE}: inputs {described} -> outputs {', '.join(names) or 'output_0'}"


def _input_name(tensor: Any, index: int) -> str:
    name = str(getattr(tensor, "name", "") or "").split(":")[0]
    return name if _KEY.match(name) else f"input_{index}"


def _saved_model_proto(out_dir: Path) -> Any:
    from tensorflow.core.protobuf import saved_model_pb2  # noqa: PLC0415

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((out_dir / "saved_model.pb").read_bytes())
    return proto


def _clear_jit_compile(out_dir: Path) -> None:
    """Keras 3 runs some ops under jit_compile (XLA), e.g. channels-first 3D convolutions on CPU. TF Serving
    compiles XLA only with --xla_cpu_compilation_enabled (experimental) and fails the first request
    otherwise: drop the marking, so the server runs the ops' ordinary kernels."""
    proto = _saved_model_proto(out_dir)
    changed = False
    for meta in proto.meta_graphs:
        graph = meta.graph_def
        holders = [*graph.node, *graph.library.function,
                   *(node for fn in graph.library.function for node in fn.node_def)]
        for holder in holders:
            if "_XlaMustCompile" in holder.attr:
                del holder.attr["_XlaMustCompile"]
                changed = True
        for obj in meta.object_graph_def.nodes:
            if obj.HasField("function") and obj.function.function_spec.jit_compile:
                obj.function.function_spec.jit_compile = 0
                changed = True
    if changed:
        (out_dir / "saved_model.pb").write_bytes(proto.SerializeToString())
        (out_dir / "fingerprint.pb").unlink(missing_ok=True)  # it hashes the old saved_model.pb


def _channels_first_note(out_dir: Path) -> str:
    proto = _saved_model_proto(out_dir)
    ops: set[str] = set()
    for meta in proto.meta_graphs:
        graph = meta.graph_def
        for node in [*graph.node, *(n for fn in graph.library.function for n in fn.node_def)]:
            if node.op.endswith("3D") and node.attr["data_format"].s == b"NCDHW":
                ops.add(node.op)
    if not ops:
        return ""
    return (f"note: the model runs {', '.join(sorted(ops))} channels-first (NCDHW). TensorFlow's own CPU kernels take "
            "channels-last only; oneDNN runs NCDHW (the mkl image; elsewhere TF_ENABLE_ONEDNN_OPTS=1, on by default "
            "only on CPUs with AVX-512 VNNI or newer). A server without oneDNN loads the model and fails every "
            "request with 'CPU implementation of Conv3D currently only supports the NHWC tensor format'")
