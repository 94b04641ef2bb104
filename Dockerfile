# syntax=docker/dockerfile:1.7
# Two targets:
#   operator — the operator, the node agent and the model fetcher (slim, non-root, read-only-rootfs friendly)
#   bench    — the benchmark client (carries grpcio and tensorflow-serving-api, hence TensorFlow)
# Build: docker build --target operator -t pinserve/operator:0.1.0 .
#        docker build --target bench    -t pinserve/bench:0.1.0 .
# Dependencies are installed in layers of their own, from pyproject.toml alone: a change to the source
# rebuilds only the small pinserve wheel on top, not TensorFlow.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 65532 pinserve && \
    useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin pinserve

FROM base AS operator-deps
COPY pyproject.toml /tmp/pinserve/
RUN python -c "import tomllib; p = tomllib.load(open('/tmp/pinserve/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies']))" > /tmp/pinserve/requirements.txt && \
    pip install -r /tmp/pinserve/requirements.txt && rm -rf /tmp/pinserve

FROM operator-deps AS bench-deps
COPY pyproject.toml /tmp/pinserve/
RUN python -c "import tomllib; p = tomllib.load(open('/tmp/pinserve/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['optional-dependencies']['bench']))" > /tmp/pinserve/requirements.txt && \
    pip install -r /tmp/pinserve/requirements.txt && rm -rf /tmp/pinserve

FROM base AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM operator-deps AS operator
COPY --from=wheel /wheels /wheels
RUN pip install --no-index --no-deps /wheels/*.whl && rm -rf /wheels
USER 65532:65532
# kopf's liveness endpoint (the chart probes it)
EXPOSE 8080
ENTRYPOINT ["pinserve"]
CMD ["run"]

FROM bench-deps AS bench
COPY --from=wheel /wheels /wheels
RUN pip install --no-index --no-deps /wheels/*.whl && rm -rf /wheels
USER 65532:65532
ENTRYPOINT ["pinserve"]
CMD ["bench", "--help"]
