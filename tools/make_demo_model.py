"""Build the demo's small, real SavedModel (y = x/2 + 2 over float32[None, 4]) as a tar.gz.

Usage: python tools/make_demo_model.py OUT.tar.gz
The archive holds half_plus_two/saved_model/{saved_model.pb,variables/...}; the demo
ModelServer fetches it with spec.model.uri and path half_plus_two/saved_model.
"""

from __future__ import annotations

import sys
import tarfile
import tempfile
from pathlib import Path


def build_dir(model_dir: Path) -> Path:
    """Save the SavedModel into ``model_dir`` (saved_model.pb and variables/)."""
    import tensorflow as tf  # noqa: PLC0415  (heavy; only this tool needs it)

    class HalfPlusTwo(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = tf.Variable(0.5)
            self.b = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": self.a * x + self.b}

    module = HalfPlusTwo()
    tf.saved_model.save(module, str(model_dir), signatures={"serving_default": module.serve})
    return model_dir


def build(out: Path) -> Path:
    """The SavedModel as a tar.gz holding half_plus_two/saved_model/."""
    with tempfile.TemporaryDirectory() as tmp:
        build_dir(Path(tmp) / "half_plus_two" / "saved_model")
        with tarfile.open(out, "w:gz") as tar:
            tar.add(Path(tmp) / "half_plus_two", arcname="half_plus_two")
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "half_plus_two.tar.gz")
    print(build(target))
