"""Typed ModelServer API (pinserve.io/v1alpha1): the only parser of a custom resource.

The CRD schema in ``crds/`` rejects what it can at apply time; these models are the
second line of defence (and the parser of ``pinserve render -f``).  Every error names
the field in the spec's own camelCase path, e.g. ``spec.resources.physicalCores``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError

GROUP = "pinserve.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelServer"
PLURAL = "modelservers"

# Kubernetes quantity (binary and decimal suffixes); the apiserver normalises nothing here.
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_URI_SCHEMES = ("http://", "https://", "gs://", "s3://")
# DNS-1035: the name also names the model's Service, which must start with a letter.
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# A frozen graph's signature: key (no '=': the fetcher's --input KEY=TENSOR) -> TensorFlow tensor name.
_SIGNATURE_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")
_TENSOR_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_./>-]*(:[0-9]+)?$")


class _Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class NumaPolicy(StrEnum):
    PREFER = "Prefer"
    REQUIRE = "Require"
    IGNORE = "Ignore"


class ThreadConfig(StrEnum):
    """How thread counts reach TensorFlow Serving: env (mkl image), flags, or both."""

    ENV = "Env"
    FLAGS = "Flags"
    BOTH = "Both"


class ModelFormat(StrEnum):
    """What the model source holds; anything but a SavedModel is converted by the fetch init container."""

    SAVED_MODEL = "savedModel"
    FROZEN_GRAPH = "frozenGraph"  # a GraphDef with constants for variables (.pb): inputs/outputs name tensors
    KERAS = "keras"  # a whole Keras model file (.h5)


class PvcSource(_Model):
    claim_name: str
    sub_path: str = ""


class ModelSource(_Model):
    name: str | None = None
    uri: str | None = None
    pvc: PvcSource | None = None
    image: str | None = None
    path: str = ""
    version: int = Field(default=1, ge=1)
    # Name of a Secret in the ModelServer's namespace with fetch credentials; never inline.
    credentials_secret: str | None = None
    # After the sources: the validators below read them.
    format: ModelFormat = ModelFormat.SAVED_MODEL
    # frozenGraph only: serving_default's keys -> tensor names, e.g. {"ImageTensor": "ImageTensor:0"}.
    inputs: dict[str, str] = Field(default_factory=dict, max_length=16, validate_default=True)
    outputs: dict[str, str] = Field(default_factory=dict, max_length=16, validate_default=True)

    @field_validator("format")
    @classmethod
    def _converted_from_uri(cls, value: ModelFormat, info: ValidationInfo) -> ModelFormat:
        if value is not ModelFormat.SAVED_MODEL and info.data.get("uri") is None and (
                info.data.get("pvc") is not None or info.data.get("image") is not None):
            raise ValueError(f"{value.value} is converted to a SavedModel by the fetch init container, which "
                             "reads spec.model.uri: a pvc or image source must hold a SavedModel")
        return value

    @field_validator("inputs", "outputs")
    @classmethod
    def _signature(cls, tensors: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        fmt = info.data.get("format")
        what = info.field_name
        if fmt is ModelFormat.FROZEN_GRAPH and not tensors:
            example = "ImageTensor: ImageTensor:0" if what == "inputs" else "SemanticPredictions: SemanticPredictions:0"
            raise ValueError(f"format frozenGraph needs at least one entry (signature key: tensor name, e.g. "
                             f"{example}): a frozen graph has no signature of its own")
        if fmt is not None and fmt is not ModelFormat.FROZEN_GRAPH and tensors:
            raise ValueError(f"only format frozenGraph takes {what}; a {fmt.value} model brings its own signature")
        for key, tensor in tensors.items():
            if not _SIGNATURE_KEY.match(key):
                raise ValueError(f"signature key {key!r} must be letters, digits, '_', '.', '/', '-' (no '=')")
            if not _TENSOR_NAME.match(tensor):
                raise ValueError(f"{key}: {tensor!r} is not a tensor name such as ImageTensor:0")
        return tensors

    @field_validator("uri")
    @classmethod
    def _uri_scheme(cls, uri: str | None) -> str | None:
        if uri is not None and not uri.startswith(_URI_SCHEMES):
            raise ValueError(f"must start with one of {', '.join(_URI_SCHEMES)}")
        return uri

    @field_validator("name")
    @classmethod
    def _model_name(cls, name: str | None) -> str | None:
        if name is not None and not _MODEL_NAME.match(name):
            raise ValueError("must be letters, digits, '_', '.', '-' and start with a letter or digit")
        return name

    @field_validator("path")
    @classmethod
    def _relative_path(cls, path: str) -> str:
        if path.startswith("/") or ".." in path.split("/"):
            raise ValueError("must be a relative path inside the model source without '..'")
        return path

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Self:
        given = [n for n in ("uri", "pvc", "image") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"exactly one of uri, pvc, image must be set (got {', '.join(given) or 'none'})"
            )
        return self


class Batching(_Model):
    max_batch_size: int = Field(default=8, ge=1)
    batch_timeout_micros: int = Field(default=1000, ge=0)
    num_batch_threads: int | None = Field(default=None, ge=1)
    max_enqueued_batches: int = Field(default=100, ge=1)


class EnvVar(_Model):
    name: str
    value: str | None = None
    value_from: dict[str, Any] | None = None


class ServerSpec(_Model):
    image: str | None = None
    batching: Batching | None = None
    thread_config: ThreadConfig = ThreadConfig.BOTH
    args: list[str] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)

    @field_validator("env")
    @classmethod
    def _unique_names(cls, env: list[EnvVar]) -> list[EnvVar]:
        # A map keyed by name (as in the CRD): duplicates would break server-side apply of the Deployment.
        first: dict[str, int] = {}
        for index, var in enumerate(env):
            if var.name in first:
                raise ValueError(f"duplicate name {var.name!r} (entries {first[var.name]} and {index}); "
                                 "each variable may be set once")
            first[var.name] = index
        return env


class Resources(_Model):
    physical_cores: int = Field(ge=1, le=512)
    memory: str = "4Gi"

    @field_validator("memory")
    @classmethod
    def _quantity(cls, memory: str) -> str:
        if not _QUANTITY.match(memory):
            raise ValueError("must be a Kubernetes quantity such as 8Gi or 512Mi")
        return memory


class Threading(_Model):
    intra_op: int | None = Field(default=None, ge=1)
    inter_op: int | None = Field(default=None, ge=1)
    omp: int | None = Field(default=None, ge=1)
    kmp_affinity: str | None = None
    kmp_blocktime: int | None = Field(default=None, ge=0)


class Placement(_Model):
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] | None = None
    numa: NumaPolicy = NumaPolicy.PREFER


class LatencyBenchmark(_Model):
    # 662 samples is the least MLPerf's early-stopping rule accepts for a p99; 700 leaves margin.
    requests: int = Field(default=700, ge=1)


class ThroughputBenchmark(_Model):
    batch_size: int = Field(default=8, ge=1)
    concurrency: int = Field(default=4, ge=1)
    duration_seconds: int = Field(default=20, ge=1, le=3600)


class BenchmarkInputs(_Model):
    fill: Literal["random", "zeros"] = "random"
    # Input name -> dims, filling the model's dynamic dimensions (-1) e.g. {"inputs": [1, 600, 600, 3]}.
    shapes: dict[str, list[int]] = Field(default_factory=dict)


class BenchmarkPlacement(StrEnum):
    ANY = "Any"
    SAME_NODE = "SameNode"
    OTHER_NODE = "OtherNode"


class Benchmark(_Model):
    enabled: bool = True
    protocol: Literal["grpc", "rest"] = "grpc"
    signature: str = "serving_default"
    warmup_requests: int = Field(default=10, ge=0)
    latency: LatencyBenchmark = Field(default_factory=LatencyBenchmark)
    throughput: ThroughputBenchmark = Field(default_factory=ThroughputBenchmark)
    inputs: BenchmarkInputs = Field(default_factory=BenchmarkInputs)
    placement: BenchmarkPlacement = BenchmarkPlacement.ANY
    physical_cores: int = Field(default=1, ge=1, le=64)


class TuningSearch(_Model):
    """Each omitted dimension is `auto` (pinserve.tuning): Intel's rule and its neighbours."""

    intra_op: list[Annotated[int, Field(ge=1)]] | None = Field(default=None, min_length=1, max_length=16)
    inter_op: list[Annotated[int, Field(ge=1)]] | None = Field(default=None, min_length=1, max_length=16)
    batching: list[bool] | None = Field(default=None, min_length=1, max_length=2)


class Tuning(_Model):
    enabled: bool = False
    objective: Literal["latency", "throughput"] = "latency"
    p99_budget_ms: float | None = Field(default=None, ge=0.01)
    max_trials: int = Field(default=8, ge=1, le=64)
    search: TuningSearch = Field(default_factory=TuningSearch)
    # Hold the Deployment at 0 replicas while a tuning run is in progress, so the trials get the cores the
    # server would hold (nodes without spare cores of the server's shape); serving stops during every run.
    before_serving: bool = False
    # The whole run (every trial, one at a time) is bounded: past this, Tuned=False TimedOut.
    timeout_minutes: int = Field(default=60, ge=1, le=1440)

    @model_validator(mode="after")
    def _supported(self) -> Self:
        if self.p99_budget_ms is not None and self.objective != "throughput":
            raise ValueError("p99BudgetMs applies to objective throughput only")
        return self


class ModelServerSpec(_Model):
    model: ModelSource
    server: ServerSpec = Field(default_factory=ServerSpec)
    resources: Resources
    threading: Threading = Field(default_factory=Threading)
    placement: Placement = Field(default_factory=Placement)
    replicas: int = Field(default=1, ge=0, le=1000)
    benchmark: Benchmark = Field(default_factory=Benchmark)
    tuning: Tuning = Field(default_factory=Tuning)

    @model_validator(mode="after")
    def _thread_bounds(self) -> Self:
        # Oversubscription beyond 4 threads per physical core only ever hurts latency.
        bound = 4 * self.resources.physical_cores
        for field in ("intra_op", "inter_op", "omp"):
            value = getattr(self.threading, field)
            if value is not None and value > bound:
                # Raised with its own location so the error names spec.threading.<field>, not spec.
                message = f"{value} exceeds 4 x resources.physicalCores ({bound})"
                raise ValidationError.from_exception_data(
                    "ModelServerSpec",
                    [InitErrorDetails(type=PydanticCustomError("value_error", "{message}", {"message": message}),
                                      loc=("threading", to_camel(field)), input=value)],
                )
        return self


class InvalidSpecError(ValueError):
    """A spec that cannot be served; ``field`` is the camelCase path, e.g. spec.resources.memory."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = "spec"
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("function-after", "function-before", "function-wrap")):
            continue  # pydantic's validator frames are not fields
        else:
            path += f".{part}"
    return path


def _first_error(exc: ValidationError) -> InvalidSpecError:
    err = exc.errors(include_url=False)[0]
    message = str(err["msg"]).removeprefix("Value error, ")
    return InvalidSpecError(_field_path(tuple(err["loc"])), message)


def parse_spec(spec: Mapping[str, Any] | None) -> ModelServerSpec:
    """Parse ``.spec`` of a ModelServer; raise InvalidSpecError naming the first bad field."""
    if not spec:
        raise InvalidSpecError("spec", "is required")
    if not isinstance(spec, Mapping):
        raise InvalidSpecError("spec", f"must be an object, not {type(spec).__name__}")
    try:
        return ModelServerSpec.model_validate(dict(spec))
    except ValidationError as exc:
        raise _first_error(exc) from None


class ObjectRef(_Model):
    """What a ModelServer's children need to know about it: identity for owner references."""

    namespace: str
    name: str
    uid: str
    generation: int = 1

    @field_validator("name")
    @classmethod
    def _dns_label(cls, name: str) -> str:
        # Children are named <name>, <name>-config, <name>-bench-<gen>: keep it a DNS label.
        if len(name) > 48 or not _DNS_LABEL.match(name):
            raise ValueError("metadata.name must be a DNS-1035 label (start with a letter) of at most 48 characters")
        return name


class ModelServer(BaseModel):
    """A parsed ModelServer: identity plus typed spec."""

    model_config = ConfigDict(frozen=True)

    ref: ObjectRef
    spec: ModelServerSpec
    annotations: dict[str, str] = Field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return self.spec.model.name or self.ref.name


def parse_modelserver(body: Mapping[str, Any]) -> ModelServer:
    """Parse a whole ModelServer object (as a kopf body or a YAML document)."""
    meta = body.get("metadata") or {}
    if body.get("kind", KIND) != KIND:
        raise InvalidSpecError("kind", f"expected {KIND}, got {body.get('kind')!r}")
    try:
        ref = ObjectRef(
            namespace=meta.get("namespace") or "default",
            name=meta.get("name") or "",
            uid=meta.get("uid") or "",
            generation=meta.get("generation") or 1,
        )
    except ValidationError:
        raise InvalidSpecError(
            "metadata.name", "must start with a letter, hold only a-z, 0-9 and '-', and be at most 48 characters "
            "(it names the model's Service)"
        ) from None
    spec = parse_spec(body.get("spec"))
    return ModelServer(ref=ref, spec=spec, annotations=dict(meta.get("annotations") or {}))
