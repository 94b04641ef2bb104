#!/usr/bin/env python3
"""pinserve's TF Serving stand-in, `tensorflow_model_server`: test tooling, NOT TensorFlow Serving.

Serves real SavedModels with real TensorFlow behind TensorFlow Serving's flags, gRPC services
(PredictionService, ModelService) and REST API, for the end-to-end tier where the real C++ binary cannot
be installed. See README.md beside this file; `--help` lists the flags. From the repository root:

    .venv/bin/python tools/standin/tensorflow_model_server.py --port=8500 --rest_api_port=8501 \
        --model_name=m --model_base_path=/models/m \
        --tensorflow_intra_op_parallelism=4 --tensorflow_inter_op_parallelism=2 [--host=127.0.0.1]

This file is the launcher: it imports the package it sits in (this directory, whatever its name) and runs
its main, so the directory can be copied whole into an image and this file linked as
/usr/local/bin/tensorflow_model_server. It needs only the stdlib, tensorflow, numpy, grpcio and
tensorflow-serving-api.
"""

from __future__ import annotations

import importlib
import os
import sys


def _main() -> int:
    here = os.path.dirname(os.path.realpath(__file__))
    # Run as a script, Python put this directory first on sys.path: drop it so the package's module names
    # (config, server...) cannot shadow anything, and import the package from its parent instead.
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != here]
    sys.path.insert(0, os.path.dirname(here))
    server = importlib.import_module(f"{os.path.basename(here)}.server")
    return int(server.main(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(_main())
