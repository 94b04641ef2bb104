# syntax=docker/dockerfile:1.7
# Two targets:
#   operator — the operator, the node agent and the model fetcher (slim, non-root, read-only-rootfs friendly)
#   bench    — the benchmark client (carries grpcio and tensorflow-serving-api)
# Build: docker build --target operator -t pinserve/operator:0.1.0 .
#        docker build --target bench    -t pinserve/bench:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 65532 pinserve && \
    useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin pinserve

FROM base AS wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --wheel-dir /wheels/operator . && \
    pip wheel --wheel-dir /wheels/bench '.[bench]'

FROM base AS operator
COPY --from=wheels /wheels/operator /wheels
RUN pip install --no-index --find-links /wheels pinserve && rm -rf /wheels
USER 65532:65532
# kopf's liveness endpoint (the chart probes it)
EXPOSE 8080
ENTRYPOINT ["pinserve"]
CMD ["run"]

FROM base AS bench
COPY --from=wheels /wheels/bench /wheels
RUN pip install --no-index --find-links /wheels 'pinserve[bench]' && rm -rf /wheels
USER 65532:65532
ENTRYPOINT ["pinserve"]
CMD ["bench", "--help"]
