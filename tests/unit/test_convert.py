"""Model formats, for real: small models made here with TensorFlow (a frozen graph with named tensors, Keras
.h5 files, a SavedModel), served as archives or single files by an HTTP server on 127.0.0.1, put in place by
the real `pinserve fetch-model --format ...`, loaded with TensorFlow and called through serving_default:
the same numbers as the original model.
"""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the conversions need TensorFlow (the bench extra)")
keras = pytest.importorskip("keras")

from pinserve.fetch import EXIT_REASONS, fetch_model, main  # noqa: E402
from pinserve.fetch.errors import ModelConvertError  # noqa: E402

pytestmark = pytest.mark.unit

DEEPLAB = "deeplabv3_pascal_trainval"
SIGNATURE = ["--input", "ImageTensor=ImageTensor:0",
             "--output", "SemanticPredictions=SemanticPredictions:0", "--output", "Logits=Logits:0"]


@dataclass
class Models:
    """What the HTTP server serves (relative paths under root) and each model's reference outputs."""

    root: Path
    base: str = ""
    image: Any = None  # uint8 [1, 5, 7, 3]
    frozen: dict[str, Any] = field(default_factory=dict)  # reference outputs of the frozen graph
    features: Any = None  # float32 [2, 3, 4]
    keras: dict[str, Any] = field(default_factory=dict)
    volume: Any = None  # float32 [1, 4, 6, 6, 6] (channels first)
    conv3d: Any = None
    saved: Any = None

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


def _tar(target: Path, files: dict[str, bytes | Path]) -> None:
    with tarfile.open(target, "w:gz") as tar:
        for name, data in files.items():
            if isinstance(data, Path):
                tar.add(data, arcname=name)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _frozen_graph(models: Models, work: Path) -> bytes:
    """A DeepLab-shaped frozen graph: ImageTensor uint8 [1,?,?,3] -> SemanticPredictions int64, Logits float."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2  # noqa: PLC0415

    weights = tf.Variable(tf.random.stateless_uniform([3, 4], seed=[1, 2]))

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name="ImageTensor")])
    def segment(image: Any) -> Any:
        logits = tf.identity(tf.einsum("bhwc,ck->bhwk", tf.cast(image, tf.float32) / 255.0, weights), name="Logits")
        return tf.argmax(logits, axis=-1, name="SemanticPredictions")

    models.image = np.random.default_rng(3).integers(0, 256, (1, 5, 7, 3), dtype=np.uint8)
    logits = tf.einsum("bhwc,ck->bhwk", tf.cast(models.image, tf.float32) / 255.0, weights).numpy()
    models.frozen = {"SemanticPredictions": segment(models.image).numpy(), "Logits": logits}
    graph_def = convert_variables_to_constants_v2(segment.get_concrete_function()).graph.as_graph_def()
    assert {"ImageTensor", "Logits", "SemanticPredictions"} <= {n.name for n in graph_def.node}
    return bytes(graph_def.SerializeToString())


def _keras_files(models: Models, work: Path) -> tuple[Path, Path]:
    """A two-output functional model and a channels-first Conv3D model, each saved as .h5."""
    features = keras.Input(shape=(3, 4), name="features")
    hidden = keras.layers.Dense(5, activation="relu", name="hidden")(features)
    scores = keras.layers.Dense(2, name="scores")(hidden)
    probs = keras.layers.Softmax(name="probs")(scores)
    model = keras.Model(features, [scores, probs])
    model.compile(optimizer="adam", loss="mse")  # compiled state in the file: conversion must not need it
    dense = work / "dense.h5"
    model.save(dense)
    models.features = np.random.default_rng(4).standard_normal((2, 3, 4)).astype(np.float32)
    models.keras = dict(zip(["scores", "probs"], model.predict(models.features, verbose=0), strict=True))

    volume = keras.Input(shape=(4, 6, 6, 6), name="input_1")
    conv = keras.layers.Conv3D(2, 3, padding="same", data_format="channels_first", name="conv")(volume)
    out = keras.layers.Activation("sigmoid", name="probabilities")(conv)
    unet = keras.Model(volume, out)
    conv3d = work / "tumor_segmentation_model.h5"
    unet.save(conv3d)
    models.volume = np.random.default_rng(5).standard_normal((1, 4, 6, 6, 6)).astype(np.float32)
    models.conv3d = unet.predict(models.volume, verbose=0)
    return dense, conv3d


def _saved_model(models: Models, work: Path) -> Path:
    class Doubler(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            self.k = tf.Variable([2.0, 3.0])

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def __call__(self, x: Any) -> Any:
            return {"y": x * self.k}

    module = Doubler()
    export = work / "export" / "model" / "saved_model"
    tf.saved_model.save(module, str(export), signatures={"serving_default": module.__call__})
    models.saved = module(tf.constant([[1.0, 1.0], [0.5, -2.0]]))["y"].numpy()
    return export


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Models]:
    work = tmp_path_factory.mktemp("made")
    root = tmp_path_factory.mktemp("served")
    models = Models(root)
    graph = _frozen_graph(models, work)
    dense, conv3d = _keras_files(models, work)
    saved = _saved_model(models, work)
    # The shape of the DeepLab archive: the frozen graph beside a checkpoint.
    _tar(root / "deeplab.tar.gz", {f"{DEEPLAB}/frozen_inference_graph.pb": graph,
                                   f"{DEEPLAB}/model.ckpt.index": b"index",
                                   f"{DEEPLAB}/model.ckpt.data-00000-of-00001": b"data"})
    # The shape of Intel's R-FCN archive: a frozen graph and a SavedModel side by side.
    _tar(root / "rfcn-like.tar.gz", {"m/frozen_inference_graph.pb": graph, "m/saved_model": saved})
    _tar(root / "keras.tar.gz", {"keras/model/dense.h5": dense, "keras/README": b"a Keras model"})
    _tar(root / "two-h5.tar.gz", {"a.h5": dense, "b/c.h5": conv3d})
    _tar(root / "saved.tar.gz", {"model/saved_model": saved})
    (root / "unet").mkdir()
    (root / "unet" / conv3d.name).write_bytes(conv3d.read_bytes())
    (root / "dense.h5").write_bytes(dense.read_bytes())
    (root / "bad.h5").write_bytes(b"<html>this is a login page, not HDF5</html>")
    (root / "bad.pb").write_bytes(b"this is not a GraphDef at all")
    unsupported = tf.compat.v1.GraphDef()
    unsupported.node.add(name="ImageTensor", op="Placeholder").attr["dtype"].type = tf.uint8.as_datatype_enum
    unsupported.node.add(name="Segment", op="PinserveNoSuchOp", input=["ImageTensor"])
    (root / "unsupported.pb").write_bytes(unsupported.SerializeToString())
    inputs = keras.Input(shape=(3,))
    weights = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    weights.save_weights(work / "only.weights.h5")
    (root / "weights.h5").write_bytes((work / "only.weights.h5").read_bytes())

    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    models.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield models
    server.shutdown()
    server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PINSERVE_TERMINATION_LOG", str(tmp_path / "termination-log"))


def fetch_cli(*args: str) -> int:
    return main(["--retries", "0", "--timeout", "10", *args])


def serving_default(dest: Path) -> Any:
    return tf.saved_model.load(str(dest)).signatures["serving_default"]


def termination(tmp_path: Path) -> str:
    return (tmp_path / "termination-log").read_text()


# -- frozen graphs ----------------------------------------------------------------------------------------


def test_frozen_graph_archive_through_the_real_cli(models: Models, tmp_path: Path) -> None:
    """The init container's very command, in a child process: DeepLab's archive layout, path = the directory."""
    dest = tmp_path / "models" / "deeplabv3" / "1"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-m", "pinserve", "fetch-model", "--uri", models.url("deeplab.tar.gz"), "--path", DEEPLAB,
         "--dest", str(dest), "--format", "frozenGraph", *SIGNATURE],
        capture_output=True, text=True, env=env, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SavedModel converted from frozenGraph deeplabv3_pascal_trainval/frozen_inference_graph.pb" in done.stdout
    assert "ImageTensor=ImageTensor:0 (uint8 [1,?,?,3])" in done.stderr  # the signature, logged
    signature = serving_default(dest)
    ((key, spec),) = signature.structured_input_signature[1].items()
    assert (key, spec.dtype, spec.shape.as_list()) == ("ImageTensor", tf.uint8, [1, None, None, 3])
    got = signature(ImageTensor=tf.constant(models.image))
    assert set(got) == {"SemanticPredictions", "Logits"}
    np.testing.assert_array_equal(got["SemanticPredictions"].numpy(), models.frozen["SemanticPredictions"])
    np.testing.assert_allclose(got["Logits"].numpy(), models.frozen["Logits"], rtol=1e-6)
    record = json.loads((dest.parent / ".1.pinserve-fetch.json").read_text())
    assert record["format"] == "frozenGraph" and record["inputs"] == {"ImageTensor": "ImageTensor:0"}


def test_frozen_graph_named_by_file_and_beside_a_saved_model(models: Models, tmp_path: Path) -> None:
    dest = tmp_path / "m" / "1"
    assert fetch_cli("--uri", models.url("deeplab.tar.gz"), "--path", f"{DEEPLAB}/frozen_inference_graph.pb",
                     "--dest", str(dest), "--format", "frozenGraph", *SIGNATURE) == 0
    np.testing.assert_array_equal(serving_default(dest)(ImageTensor=tf.constant(models.image))
                                  ["SemanticPredictions"].numpy(), models.frozen["SemanticPredictions"])
    # saved_model.pb is no frozen graph: the directory's only candidate is frozen_inference_graph.pb.
    other = tmp_path / "r" / "1"
    assert fetch_cli("--uri", models.url("rfcn-like.tar.gz"), "--path", "m", "--dest", str(other),
                     "--format", "frozenGraph", "--input", "i=ImageTensor", "--output", "o=SemanticPredictions") == 0
    got = serving_default(other)(i=tf.constant(models.image))  # ':0' is implied
    np.testing.assert_array_equal(got["o"].numpy(), models.frozen["SemanticPredictions"])


@pytest.mark.parametrize(("flag", "pair", "says"), [
    ("--input", "ImageTensor=Image:0", ("input ImageTensor: tensor 'Image:0' is not in the graph",
                                        "placeholders: ImageTensor:0 (uint8 [1,?,?,3])")),
    ("--output", "SemanticPredictions=Predictions:0", ("output SemanticPredictions: tensor 'Predictions:0'",
                                                       "unconsumed outputs: Identity:0 (int64 [1,?,?])")),
])
def test_unknown_tensor_fails_naming_it(models: Models, tmp_path: Path, flag: str, pair: str,
                                        says: tuple[str, str]) -> None:
    good = {"--input": "ImageTensor=ImageTensor:0", "--output": "SemanticPredictions=SemanticPredictions:0"}
    good[flag] = pair
    dest = tmp_path / "m" / "1"
    code = fetch_cli("--uri", models.url("deeplab.tar.gz"), "--path", DEEPLAB, "--dest", str(dest),
                     "--format", "frozenGraph", "--input", good["--input"], "--output", good["--output"])
    assert code == ModelConvertError.exit_code and EXIT_REASONS[code] == "ModelConvertFailed"
    message = termination(tmp_path)
    assert message.startswith("ModelConvertFailed: ") and all(part in message for part in says)
    assert message.count("\n") == 1
    assert not dest.exists() and sorted(p.name for p in dest.parent.iterdir()) == []  # nothing half-made


@pytest.mark.parametrize(("name", "says"), [
    ("bad.pb", "ModelConvertFailed: bad.pb is not a TensorFlow GraphDef"),
    ("unsupported.pb", "ModelConvertFailed: unsupported.pb cannot be imported by TensorFlow"),
])
def test_not_a_graph_or_an_unknown_op_fails_clearly(models: Models, tmp_path: Path, name: str, says: str) -> None:
    code = fetch_cli("--uri", models.url(name), "--dest", str(tmp_path / "m" / "1"), "--format", "frozenGraph",
                     "--input", "i=ImageTensor:0", "--output", "o=Segment:0")
    assert code == ModelConvertError.exit_code
    assert termination(tmp_path).startswith(says), termination(tmp_path)
    if name == "unsupported.pb":
        assert "PinserveNoSuchOp" in termination(tmp_path)


# -- Keras ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("uri", "path"), [
    ("dense.h5?dl=1", ""),  # the URI is the .h5 itself (a Dropbox-style download link)
    ("keras.tar.gz", "keras/model"),  # the directory holding it
    ("keras.tar.gz", "keras/model/dense.h5"),  # the file
    ("keras.tar.gz", ""),  # the only .h5 in the archive
])
def test_keras_h5_becomes_a_saved_model_with_the_model_s_own_signature(models: Models, tmp_path: Path, uri: str,
                                                                       path: str) -> None:
    dest = tmp_path / "k" / "1"
    assert fetch_cli("--uri", models.url(uri), "--path", path, "--dest", str(dest), "--format", "keras") == 0
    signature = serving_default(dest)
    ((key, spec),) = signature.structured_input_signature[1].items()
    assert (key, spec.dtype, spec.shape.as_list()) == ("features", tf.float32, [None, 3, 4])
    got = signature(features=tf.constant(models.features))
    assert set(got) == {"scores", "probs"}
    for name, want in models.keras.items():
        np.testing.assert_allclose(got[name].numpy(), want, rtol=1e-5, atol=1e-6)


def test_channels_first_conv3d_serves_with_onednn_and_says_so(models: Models, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The 3D U-Net case: Keras 3 marks NCDHW Conv3D for XLA, which TF Serving runs only with an experimental
    flag; the converter drops the marking, so the graph's Conv3D is NCDHW and needs oneDNN on a CPU."""
    dest = tmp_path / "unet" / "1"
    assert fetch_cli("--uri", models.url("unet/tumor_segmentation_model.h5?dl=1"), "--dest", str(dest),
                     "--format", "keras") == 0
    err = capsys.readouterr().err
    assert "input_1=float32 [-1,4,6,6,6]" in err and "channels-first (NCDHW)" in err and "oneDNN" in err
    assert b"_XlaMustCompile" not in (dest / "saved_model.pb").read_bytes()
    np.save(tmp_path / "x.npy", models.volume)
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "f = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
        "try:\n"
        "    y = f(input_1=tf.constant(np.load(sys.argv[2])))['probabilities'].numpy()\n"
        "except tf.errors.InvalidArgumentError as e:\n"
        "    print('FAILED', ' '.join(e.message.split())); raise SystemExit(0)\n"
        "np.save(sys.argv[3], y); print('SERVED')\n"
    )
    results = {}
    for onednn in ("1", "0"):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "TF_ENABLE_ONEDNN_OPTS": onednn}
        done = subprocess.run([sys.executable, "-c", script, str(dest), str(tmp_path / "x.npy"),
                               str(tmp_path / f"y{onednn}.npy")], capture_output=True, text=True, env=env,
                              timeout=240, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        results[onednn] = done.stdout.strip().splitlines()[-1]
    assert results["1"] == "SERVED"
    np.testing.assert_allclose(np.load(tmp_path / "y1.npy"), models.conv3d, rtol=1e-5, atol=1e-6)
    # What the README and the example promise a user without oneDNN sees.
    assert results["0"].startswith("FAILED") and "only supports the NHWC tensor format" in results["0"], results["0"]


@pytest.mark.parametrize(("uri", "says"), [
    ("bad.h5", "bad.h5 cannot be loaded as a Keras model: OSError"),
    ("weights.h5", "the file holds weights only"),
])
def test_bad_h5_fails_clearly(models: Models, tmp_path: Path, uri: str, says: str) -> None:
    dest = tmp_path / "k" / "1"
    code = fetch_cli("--uri", models.url(uri), "--dest", str(dest), "--format", "keras")
    assert code == ModelConvertError.exit_code
    message = termination(tmp_path)
    assert message.startswith("ModelConvertFailed: ") and says in message
    assert not dest.exists()


# -- SavedModel, and what is chosen ------------------------------------------------------------------------


def test_saved_model_format_serves_the_archive_as_is(models: Models, tmp_path: Path) -> None:
    dest = tmp_path / "s" / "1"
    assert fetch_cli("--uri", models.url("saved.tar.gz"), "--path", "model/saved_model", "--dest", str(dest),
                     "--format", "savedModel") == 0
    got = serving_default(dest)(x=tf.constant([[1.0, 1.0], [0.5, -2.0]]))["y"].numpy()
    np.testing.assert_allclose(got, models.saved)


def test_model_files_none_or_several(models: Models, tmp_path: Path) -> None:
    assert fetch_cli("--uri", models.url("two-h5.tar.gz"), "--dest", str(tmp_path / "a" / "1"),
                     "--format", "keras") == 23
    assert termination(tmp_path).startswith("AmbiguousModelFile: ") and "a.h5, b/c.h5" in termination(tmp_path)
    assert fetch_cli("--uri", models.url("deeplab.tar.gz"), "--dest", str(tmp_path / "b" / "1"),
                     "--format", "keras") == 22
    assert "holds no .h5/.hdf5/.keras file" in termination(tmp_path)
    assert fetch_cli("--uri", models.url("deeplab.tar.gz"), "--path", "nowhere", "--dest",
                     str(tmp_path / "c" / "1"), "--format", "frozenGraph", *SIGNATURE) == 17
    assert f"{DEEPLAB}/frozen_inference_graph.pb" in termination(tmp_path)


def test_a_restart_reuses_the_conversion_unless_the_signature_changed(models: Models, tmp_path: Path) -> None:
    dest = tmp_path / "m" / "1"
    args = ["--uri", models.url("deeplab.tar.gz"), "--path", DEEPLAB, "--dest", str(dest), "--format", "frozenGraph"]
    first = fetch_model(models.url("deeplab.tar.gz"), DEEPLAB, dest, env={}, log=lambda _m: None,
                        model_format="frozenGraph", inputs={"ImageTensor": "ImageTensor:0"},
                        outputs={"SemanticPredictions": "SemanticPredictions:0"})
    assert not first.reused and first.format == "frozenGraph" and "SemanticPredictions" in first.signature
    again = fetch_model(models.url("deeplab.tar.gz"), DEEPLAB, dest, env={}, log=lambda _m: None,
                        model_format="frozenGraph", inputs={"ImageTensor": "ImageTensor:0"},
                        outputs={"SemanticPredictions": "SemanticPredictions:0"})
    assert again.reused and again.signature == first.signature
    assert fetch_cli(*args, *SIGNATURE) == 0  # one more output: converted again
    assert set(serving_default(dest).structured_outputs) == {"SemanticPredictions", "Logits"}


@pytest.mark.parametrize(("args", "says"), [
    (["--format", "frozenGraph", "--output", "o=o:0"], "format frozenGraph needs --input KEY=TENSOR"),
    (["--format", "keras", "--input", "i=i:0"], "apply to format frozenGraph only"),
    (["--input", "i=i:0"], "apply to format frozenGraph only"),
    (["--format", "frozenGraph", "--input", "ImageTensor", "--output", "o=o:0"], "must be KEY=TENSOR"),
    (["--format", "frozenGraph", "--input", "a=x:0", "--input", "a=y:0", "--output", "o=o:0"], "'a' twice"),
])
def test_bad_options_are_invalid_arguments(models: Models, tmp_path: Path, args: list[str], says: str) -> None:
    code = fetch_cli("--uri", models.url("deeplab.tar.gz"), "--dest", str(tmp_path / "m" / "1"), *args)
    assert code == 3 and termination(tmp_path).startswith("InvalidArgument: ") and says in termination(tmp_path)


def test_without_tensorflow_the_message_names_the_image(models: Models, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now raises ImportError
    code = fetch_cli("--uri", models.url("dense.h5"), "--dest", str(tmp_path / "m" / "1"), "--format", "keras")
    assert code == ModelConvertError.exit_code
    assert "not installed here" in termination(tmp_path) and "bench image" in termination(tmp_path)
