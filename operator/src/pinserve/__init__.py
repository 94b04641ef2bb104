"""pinserve: serve TensorFlow models on pinned, whole physical CPU cores in Kubernetes."""

__version__ = "0.1.0"
