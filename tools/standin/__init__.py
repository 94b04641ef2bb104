"""pinserve's TF Serving stand-in: test tooling, NOT TensorFlow Serving.

A Python program that serves a real SavedModel with real TensorFlow behind the same command-line flags,
gRPC services and REST API as TensorFlow Serving's `tensorflow_model_server`, for the end-to-end tier on
machines where that C++ binary cannot be installed. See README.md beside this file.

The directory is self-contained (stdlib, tensorflow, numpy, grpcio and tensorflow-serving-api only): copy
it whole and run `tensorflow_model_server.py` as a script. Run from the repository root:

    python tools/standin/tensorflow_model_server.py --port=8500 --model_name=m --model_base_path=/models/m
"""
