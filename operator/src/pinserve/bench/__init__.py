"""`pinserve bench`: a benchmark client for any TensorFlow Serving endpoint.

It discovers the model's signature (GetModelMetadata), generates inputs from it, measures batch-1 latency
with one request in flight (SingleStream) and batch-N throughput under concurrency, and reports like
MLPerf: percentiles only where the sample count supports them. Entry point: `pinserve.bench.cli.main`.
"""
