"""The ModelServer CRD describes exactly the pydantic API (field names, defaults, bounds, enums),
is a structural schema, and its CEL rules refer to fields that exist.

Whether the API server really rejects bad objects is the integration tier's job; here the CEL
rules are checked for shape, and evaluated with cel-python when that is installed.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pinserve import api, benchflow
from pinserve.bench.report import compact_summary
from pinserve.pinning import ANNOTATION_CPUS, pod_view
from pinserve.planning import node_info, plan
from pinserve.render.common import selector_string
from pinserve.render.job import LABEL_RUN_KEY
from pinserve.render.service import endpoints
from pinserve.settings import Settings
from pinserve.status import Condition, desired_status

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "modelservers.pinserve.io.yaml"
CHART_CRD_PATH = ROOT / "charts" / "pinserve" / "crds" / "modelservers.pinserve.io.yaml"

Schema = dict[str, Any]

# The keys Kubernetes' JSONSchemaProps accepts in a CRD (uniqueItems, patternProperties, $ref and
# friends are rejected or not structural, so they are absent on purpose).
ALLOWED_KEYS = {
    "type", "format", "description", "properties", "additionalProperties", "items", "required",
    "default", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
    "maxLength", "pattern", "minItems", "maxItems", "minProperties", "maxProperties", "nullable",
    "title", "example", "multipleOf",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string", "x-kubernetes-validations",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
    "x-kubernetes-embedded-resource",
}  # fmt: skip

# Free-form sub-objects that really are Kubernetes types; nothing else may keep unknown fields.
PRESERVE_UNKNOWN_ALLOWED = {
    "spec.placement.tolerations[]",
    "spec.placement.affinity",
    "spec.server.env[].valueFrom",
}

PYDANTIC_TO_CRD_TYPE = {"integer": "integer", "string": "string", "boolean": "boolean",
                        "object": "object", "array": "array", "number": "number"}  # fmt: skip


def load_crd() -> dict[str, Any]:
    doc = yaml.safe_load(CRD_PATH.read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return load_crd()


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    versions = crd["spec"]["versions"]
    assert [v["name"] for v in versions] == [api.VERSION]
    v = versions[0]
    assert isinstance(v, dict)
    return v


@pytest.fixture(scope="module")
def root(version: dict[str, Any]) -> Schema:
    schema = version["schema"]["openAPIV3Schema"]
    assert isinstance(schema, dict)
    return schema


@pytest.fixture(scope="module")
def spec_schema(root: Schema) -> Schema:
    spec = root["properties"]["spec"]
    assert isinstance(spec, dict)
    return spec


# ---------------------------------------------------------------- pydantic's JSON schema, resolved


def _resolve(node: Schema, defs: Schema) -> Schema:
    """Inline $ref and collapse Optional (anyOf [X, null]) so nodes compare like the CRD's."""
    node = dict(node)
    while "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        assert len(options) == 1, f"unexpected union {options}"
        node = {**_resolve(options[0], defs), **node}
    return node


def _pydantic_spec() -> tuple[Schema, Schema]:
    schema = api.ModelServerSpec.model_json_schema(by_alias=True)
    return schema, schema.get("$defs", {})


def _compare(crd_node: Schema, py_raw: Schema, defs: Schema, path: str, errors: list[str]) -> None:
    py = _resolve(py_raw, defs)
    py_type = py.get("type")
    if py_type is not None and crd_node.get("type") != PYDANTIC_TO_CRD_TYPE[py_type]:
        errors.append(f"{path}: type {crd_node.get('type')!r} != pydantic {py_type!r}")
    if "enum" in py and sorted(crd_node.get("enum", [])) != sorted(py["enum"]):
        errors.append(f"{path}: enum {crd_node.get('enum')} != pydantic {py['enum']}")
    for bound in ("minimum", "maximum"):
        if crd_node.get(bound) != py.get(bound):
            errors.append(f"{path}: {bound} {crd_node.get(bound)} != pydantic {py.get(bound)}")
    py_default = py.get("default")
    if py_default is not None and crd_node.get("default") != py_default:
        errors.append(f"{path}: default {crd_node.get('default')!r} != pydantic {py_default!r}")
    if py_default is None and "default" in crd_node and crd_node["default"] != {}:
        # Only `{}` on an object whose model has a default_factory; test_defaulting checks those.
        errors.append(f"{path}: CRD default {crd_node['default']!r} but pydantic has none")

    if "properties" in py:
        crd_props = crd_node.get("properties", {})
        if set(crd_props) != set(py["properties"]):
            errors.append(
                f"{path}: fields differ: only in CRD {sorted(set(crd_props) - set(py['properties']))}, "
                f"only in pydantic {sorted(set(py['properties']) - set(crd_props))}"
            )
        if set(crd_node.get("required", [])) != set(py.get("required", [])):
            errors.append(f"{path}: required {crd_node.get('required')} != pydantic {py.get('required')}")
        for name in set(crd_props) & set(py["properties"]):
            _compare(crd_props[name], py["properties"][name], defs, f"{path}.{name}", errors)
    elif py_type == "object":
        extra = py.get("additionalProperties", True)
        if extra is True:
            if crd_node.get("x-kubernetes-preserve-unknown-fields") is not True:
                errors.append(f"{path}: free-form in pydantic, so the CRD must preserve unknown fields")
        elif isinstance(extra, dict):
            if "additionalProperties" not in crd_node:
                errors.append(f"{path}: pydantic map of {extra}, CRD has no additionalProperties")
            else:
                _compare(crd_node["additionalProperties"], extra, defs, f"{path}{{}}", errors)
    if py_type == "array":
        _compare(crd_node.get("items", {}), py.get("items", {}), defs, f"{path}[]", errors)


def test_spec_schema_matches_pydantic_model(spec_schema: Schema) -> None:
    py, defs = _pydantic_spec()
    errors: list[str] = []
    _compare(spec_schema, py, defs, "spec", errors)
    assert not errors, "\n".join(errors)


def test_every_spec_field_is_described(spec_schema: Schema) -> None:
    def walk(node: Schema, path: str) -> list[str]:
        missing = [] if node.get("description") else [path]
        for name, child in node.get("properties", {}).items():
            missing += walk(child, f"{path}.{name}")
        return missing

    # Every field down to spec.a.b carries a description (kubectl explain shows them).
    assert walk(spec_schema, "spec") == []


def _apply_defaults(obj: Any, node: Schema) -> Any:
    """Default like the API server: fill absent fields that have a default, recurse into objects."""
    if isinstance(obj, dict) and "properties" in node:
        for name, child in node["properties"].items():
            if name not in obj and "default" in child:
                obj[name] = copy.deepcopy(child["default"])
            if name in obj:
                obj[name] = _apply_defaults(obj[name], child)
    elif isinstance(obj, list) and "items" in node:
        return [_apply_defaults(item, node["items"]) for item in obj]
    return obj


def _drop_empty(value: Any) -> Any:
    if isinstance(value, dict):
        cleaned = {k: _drop_empty(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [_drop_empty(v) for v in value]
    return value


@pytest.mark.parametrize(
    "spec",
    [
        {"model": {"uri": "https://example.com/m.tar.gz"}, "resources": {"physicalCores": 2}},
        {
            "model": {"pvc": {"claimName": "models"}},
            "resources": {"physicalCores": 1},
            "server": {"batching": {}, "env": [{"name": "A", "value": "1"}]},
            "benchmark": {"throughput": {"concurrency": 2}},
        },
    ],
)
def test_crd_defaulting_yields_the_pydantic_defaults(spec_schema: Schema, spec: dict[str, Any]) -> None:
    """What the API server stores after defaulting is what the operator would assume anyway."""
    defaulted = _apply_defaults(copy.deepcopy(spec), spec_schema)
    from_crd = _drop_empty(defaulted)
    from_pydantic = _drop_empty(api.parse_spec(spec).to_wire())
    assert from_crd == from_pydantic
    assert api.parse_spec(defaulted) == api.parse_spec(spec)


def test_patterns_agree_with_the_api(spec_schema: Schema) -> None:
    props = spec_schema["properties"]
    memory = props["resources"]["properties"]["memory"]["pattern"]
    assert memory == api._QUANTITY.pattern
    assert props["model"]["properties"]["name"]["pattern"] == api._MODEL_NAME.pattern
    uri = re.compile(props["model"]["properties"]["uri"]["pattern"])
    for value in ("http://a/b.tar.gz", "https://a", "gs://bucket/m", "s3://bucket/m", "ftp://a", "/abs", "a"):
        accepted_by_api = True
        try:
            api.ModelSource(uri=value)
        except ValueError:
            accepted_by_api = False
        assert bool(uri.match(value)) == accepted_by_api, value


# ---------------------------------------------------------------- structural schema


def _walk(node: Schema, path: str) -> list[tuple[str, Schema]]:
    out = [(path, node)]
    for name, child in node.get("properties", {}).items():
        out += _walk(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("additionalProperties"), dict):
        out += _walk(node["additionalProperties"], f"{path}{{}}")
    if "items" in node:
        out += _walk(node["items"], f"{path}[]")
    return out


def test_schema_is_structural(root: Schema) -> None:
    errors: list[str] = []
    for path, node in _walk(root, ""):
        where = path or "<root>"
        unknown = set(node) - ALLOWED_KEYS
        if unknown:
            errors.append(f"{where}: keys not allowed in a CRD schema: {sorted(unknown)}")
        if "type" not in node and not node.get("x-kubernetes-int-or-string"):
            errors.append(f"{where}: no type")
        if node.get("type") == "object" and path != "metadata":
            if not ({"properties", "additionalProperties"} & set(node)) and not node.get(
                "x-kubernetes-preserve-unknown-fields"
            ):
                errors.append(f"{where}: object without properties, additionalProperties or preserve")
            if "properties" in node and "additionalProperties" in node:
                errors.append(f"{where}: properties and additionalProperties together")
        if node.get("type") == "array" and "items" not in node:
            errors.append(f"{where}: array without items")
        if node.get("x-kubernetes-preserve-unknown-fields") and path not in PRESERVE_UNKNOWN_ALLOWED:
            errors.append(f"{where}: preserves unknown fields but is not a free-form Kubernetes type")
        for req in node.get("required", []):
            if req not in node.get("properties", {}):
                errors.append(f"{where}: required {req!r} is not a property")
        if "enum" in node and "default" in node and node["default"] not in node["enum"]:
            errors.append(f"{where}: default {node['default']!r} not in enum")
    assert not errors, "\n".join(errors)


def test_spec_does_not_preserve_unknown_fields(spec_schema: Schema) -> None:
    assert "x-kubernetes-preserve-unknown-fields" not in spec_schema
    assert spec_schema["required"] == ["model", "resources"]


def test_lists_and_strings_under_cel_rules_are_bounded(spec_schema: Schema) -> None:
    """Unbounded lists/maps in the spec make the API server's CEL cost estimate explode."""
    for path, node in _walk(spec_schema, "spec"):
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path} needs maxItems"
        if node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
            assert "maxProperties" in node, f"{path} needs maxProperties"
        if node.get("x-kubernetes-validations") and node.get("type") == "string":
            assert "maxLength" in node, f"{path} needs maxLength"


# ---------------------------------------------------------------- CEL rules


def _rules(root: Schema) -> list[tuple[str, Schema, dict[str, Any]]]:
    return [(path, node, rule) for path, node in _walk(root, "") for rule in node.get("x-kubernetes-validations", [])]


def _balanced(rule: str) -> bool:
    depth, quote = 0, ""
    for ch in rule:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0 and not quote


CEL_STRING_METHODS = {"size", "matches", "startsWith", "endsWith", "contains"}


def test_cel_rules_are_well_formed(root: Schema) -> None:
    rules = _rules(root)
    assert len(rules) >= 6
    for path, node, rule in rules:
        text = rule["rule"]
        assert _balanced(text), f"{path}: unbalanced rule {text!r}"
        assert rule.get("message"), f"{path}: rule without message"
        assert "self" in text
        # Every self.a.b the rule reads exists in the schema of the node it is attached to.
        for ref in re.findall(r"\bself((?:\.[A-Za-z_]\w*)+)", text):
            target: Schema = node
            for part in ref.strip(".").split("."):
                if path == "" and part == "metadata":
                    target = {"properties": {"name": {"type": "string"}}}
                    continue
                props = target.get("properties", {})
                if part not in props and part not in CEL_STRING_METHODS:
                    pytest.fail(f"{path or '<root>'}: rule {text!r} reads unknown field {ref}")
                target = props.get(part, {})
        if "fieldPath" in rule:
            field = rule["fieldPath"].lstrip(".").split(".")
            target = node
            for part in field:
                assert part in target.get("properties", {}), f"{path}: fieldPath {rule['fieldPath']}"
                target = target["properties"][part]


def test_required_cel_rules_exist(root: Schema, spec_schema: Schema) -> None:
    root_rules = " ".join(r["rule"] for r in root.get("x-kubernetes-validations", []))
    assert "self.metadata.name.size() <= 48" in root_rules
    spec_rules = [r for r in spec_schema["x-kubernetes-validations"]]
    for field in ("intraOp", "interOp", "omp"):
        (rule,) = [r for r in spec_rules if f"self.threading.{field} <=" in r["rule"]]
        assert "4 * self.resources.physicalCores" in rule["rule"]
        assert f"spec.threading.{field}" in rule["message"]
        assert rule["fieldPath"] == f".threading.{field}"
    model_rules = spec_schema["properties"]["model"]["x-kubernetes-validations"]
    assert any("exactly one of" in r["message"] for r in model_rules)
    # The sizes the CEL rules would otherwise have to check are schema bounds.
    props = spec_schema["properties"]
    assert props["resources"]["properties"]["physicalCores"]["minimum"] == 1
    for field in ("intraOp", "interOp", "omp"):
        assert props["threading"]["properties"][field]["minimum"] == 1


CEL_CASES: list[tuple[str, int, Any, bool]] = [
    # (node path, rule index, self, expected)
    ("", 0, {"metadata": {"name": "a" * 48}}, True),
    ("", 0, {"metadata": {"name": "a" * 49}}, False),
    ("", 1, {"metadata": {"name": "rfcn-2"}}, True),
    ("", 1, {"metadata": {"name": "Rfcn"}}, False),
    ("spec", 0, {"resources": {"physicalCores": 2}, "threading": {"intraOp": 8}}, True),
    ("spec", 0, {"resources": {"physicalCores": 2}, "threading": {"intraOp": 9}}, False),
    ("spec", 0, {"resources": {"physicalCores": 2}}, True),
    ("spec", 1, {"resources": {"physicalCores": 1}, "threading": {"interOp": 5}}, False),
    ("spec", 2, {"resources": {"physicalCores": 1}, "threading": {"omp": 4}}, True),
    ("spec", 2, {"resources": {"physicalCores": 1}, "threading": {"omp": 5}}, False),
    ("spec.model", 0, {"uri": "http://x"}, True),
    ("spec.model", 0, {"pvc": {"claimName": "m"}}, True),
    ("spec.model", 0, {}, False),
    ("spec.model", 0, {"uri": "http://x", "image": "m:1"}, False),
    ("spec.model.path", 0, "rfcn/saved_model", True),
    ("spec.model.path", 0, "a..b/c", True),
    ("spec.model.path", 0, "/abs", False),
    ("spec.model.path", 0, "a/../b", False),
    ("spec.model.path", 0, "..", False),
]


def test_cel_rules_evaluate_as_intended(root: Schema) -> None:
    celpy = pytest.importorskip("celpy", reason="cel-python is not installed (add it to the dev extra)")
    by_path: dict[str, list[str]] = {}
    for path, _node, rule in _rules(root):
        by_path.setdefault(path, []).append(rule["rule"])
    env = celpy.Environment()
    for path, index, value, expected in CEL_CASES:
        program = env.program(env.compile(by_path[path][index]))
        got = bool(program.evaluate({"self": celpy.json_to_cel(value)}))
        assert got is expected, f"{path} rule {index} on {value!r}"
        # The pydantic model agrees wherever it sees the same input.
        if path == "spec":
            spec = {"model": {"uri": "http://x"}, **value}
            assert _parses(spec) is expected, value


def _parses(spec: dict[str, Any]) -> bool:
    try:
        api.parse_spec(spec)
    except api.InvalidSpecError:
        return False
    return True


# ---------------------------------------------------------------- names, columns, status


def test_names_and_versions(crd: dict[str, Any], version: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{api.PLURAL}.{api.GROUP}"
    spec = crd["spec"]
    assert spec["group"] == api.GROUP
    assert spec["scope"] == "Namespaced"
    names = spec["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (api.KIND, api.PLURAL, "modelserver")
    assert names["shortNames"] == ["msrv"]
    assert names["categories"] == ["pinserve"]
    assert version["served"] is True and version["storage"] is True
    assert version["subresources"] == {
        "status": {},
        # An HPA drives spec.replicas through the scale subresource and finds the pods by status.selector.
        "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                  "labelSelectorPath": ".status.selector"},
    }


def _node_at(root: Schema, path: str) -> Schema:
    node = root
    for part in path.split("."):
        name, is_list = part.removesuffix("[]"), part.endswith("[]")
        node = node["properties"][name]
        if is_list:
            node = node["items"]
    return node


def test_scale_subresource_paths_exist(root: Schema, version: dict[str, Any]) -> None:
    scale = version["subresources"]["scale"]
    assert _node_at(root, scale["specReplicasPath"].strip(".").replace("$", ""))["type"] == "integer"
    assert _node_at(root, scale["statusReplicasPath"].strip("."))["type"] == "integer"
    # The scale subresource reads labelSelectorPath as a string (the serialised selector).
    assert _node_at(root, scale["labelSelectorPath"].strip("."))["type"] == "string"


# (path, map keys): lists whose items are keyed, so the API server refuses duplicates at apply time
# (and server-side apply merges them by key instead of replacing them whole).
KEYED_LISTS = [
    ("spec.server.env", ["name"]),
    ("status.conditions", ["type"]),
    ("status.pods", ["name"]),
]


@pytest.mark.parametrize(("path", "keys"), KEYED_LISTS, ids=[p for p, _ in KEYED_LISTS])
def test_keyed_lists_are_maps(root: Schema, path: str, keys: list[str]) -> None:
    node = _node_at(root, path)
    assert node["type"] == "array"
    assert node["x-kubernetes-list-type"] == "map"
    assert node["x-kubernetes-list-map-keys"] == keys
    # A map key must be required (or defaulted) in every item, or the API server rejects the CRD.
    assert set(keys) <= set(node["items"].get("required", []))


def test_env_map_and_the_api_refuse_the_same_duplicates(spec_schema: Schema) -> None:
    env = spec_schema["properties"]["server"]["properties"]["env"]
    assert env["x-kubernetes-list-map-keys"] == ["name"]
    spec = {"model": {"uri": "https://m/x"}, "resources": {"physicalCores": 1},
            "server": {"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}}
    with pytest.raises(api.InvalidSpecError) as caught:
        api.parse_spec(spec)
    assert caught.value.field == "spec.server.env" and "duplicate name 'A'" in caught.value.message


def _resolves(root: Schema, json_path: str) -> bool:
    node = root
    cleaned = re.sub(r"\[[^\]]*\]", "[]", json_path)
    for part in cleaned.strip(".").split("."):
        name, is_list = part.removesuffix("[]"), part.endswith("[]")
        if name == "metadata":
            return True
        child = node.get("properties", {}).get(name)
        if child is None:
            return False
        node = child["items"] if is_list else child
    return True


def test_printer_columns(root: Schema, version: dict[str, Any]) -> None:
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    expected = {
        "Ready": ('.status.conditions[?(@.type=="Ready")].status', "string"),
        "Cores": (".spec.resources.physicalCores", "integer"),
        "Threads": (".status.placement.threads.intraOp", "integer"),
        "P50(ms)": (".status.benchmark.latencyMs.p50", "number"),
        "P99(ms)": (".status.benchmark.latencyMs.p99", "number"),
        "Throughput": (".status.benchmark.throughput.itemsPerSecond", "number"),
        "Age": (".metadata.creationTimestamp", "date"),
    }
    for name, (path, kind) in expected.items():
        assert columns[name]["jsonPath"] == path
        assert columns[name]["type"] == kind
        assert columns[name].get("priority", 0) == 0
    order = [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority", 0) == 0]
    assert order == list(expected)
    for column in columns.values():
        assert _resolves(root, column["jsonPath"]), column


def test_status_schema(root: Schema) -> None:
    status = root["properties"]["status"]
    props = status["properties"]
    assert {"observedGeneration", "conditions", "placement", "replicas", "readyReplicas", "endpoints",
            "pods", "benchmark", "selector"} <= set(props)  # fmt: skip
    assert props["selector"]["type"] == "string"
    conditions = props["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    cond = conditions["items"]
    assert set(cond["properties"]) == {
        "type", "status", "observedGeneration", "lastTransitionTime", "reason", "message"
    }  # fmt: skip
    assert cond["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert cond["properties"]["lastTransitionTime"]["format"] == "date-time"
    placement = props["placement"]["properties"]
    assert {"physicalCores", "cpuRequest", "threadsPerCore", "memory", "numa", "nodes", "topology",
            "threads", "assumptions", "planKey", "nodeClass"} <= set(placement)  # fmt: skip
    expression = placement["nodeClass"]["properties"]["matchExpressions"]["items"]["properties"]
    assert set(expression) == {"key", "operator", "values"}
    assert placement["nodes"]["x-kubernetes-list-type"] == "set"
    assert placement["topology"]["properties"]["source"]["enum"] == ["agent", "capacity"]
    assert {"smt", "sockets", "numaNodes"} <= set(placement["topology"]["properties"])
    threads = {"omp", "intraOp", "interOp", "kmpAffinity", "kmpBlocktime", "bound", "capped"}
    assert set(placement["threads"]["properties"]) == threads
    assert set(props["endpoints"]["properties"]) == {"grpc", "rest"}
    assert {"name", "node", "cpus", "qosClass", "physicalCores"} <= set(props["pods"]["items"]["properties"])
    bench = props["benchmark"]["properties"]
    assert {"generation", "completedAt", "jobName", "latencyMs", "requests", "throughput", "errors",
            "protocol", "notes", "runKey", "specKey"} <= set(bench)  # fmt: skip
    latency_fields = {"p50", "p90", "p99", "mean", "max", "min", "stddev"}
    for latency in (bench["latencyMs"], bench["throughput"]["properties"]["latencyMs"]):
        assert set(latency["properties"]) == latency_fields
        for field in latency["properties"].values():
            assert field == {"type": "number", "nullable": True}
    assert bench["errors"]["type"] == "integer"
    assert {"batchSize", "concurrency", "requestsPerSecond", "itemsPerSecond"} <= set(bench["throughput"]["properties"])


def _pruned(value: Any, node: Schema) -> Any:
    """What the API server keeps of ``value`` under ``node`` (unknown fields are dropped silently)."""
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return value
    if isinstance(value, dict):
        if "properties" in node:
            return {k: _pruned(v, node["properties"][k]) for k, v in value.items() if k in node["properties"]}
        if isinstance(node.get("additionalProperties"), dict):
            return {k: _pruned(v, node["additionalProperties"]) for k, v in value.items()}
        return {}
    if isinstance(value, list):
        return [_pruned(v, node.get("items", {})) for v in value]
    return value


def _operator_statuses(
    topo: Callable[..., Any], make_node: Callable[..., dict[str, Any]], make_ms: Callable[..., dict[str, Any]]
) -> list[dict[str, Any]]:
    """Status documents built by the operator's own producers: plan, pods, endpoints, benchmark."""
    settings = Settings(bench_retries=0)  # a Job without a report ends in status.benchmark.error
    ms = api.parse_modelserver(make_ms())
    agent_node = node_info(make_node("n1", topo(2, 8, 2)))
    capacity_node = node_info(make_node("n2", cpu="32"))
    mixed = [node_info(make_node("n3", topo(1, 8, 1))), node_info(make_node("n4", topo(1, 8, 1)))]
    pod = {
        "metadata": {"name": "rfcn-abc", "annotations": {ANNOTATION_CPUS: "2-5,34-37"}},
        "spec": {"nodeName": "n1"},
        "status": {"qosClass": "Guaranteed", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    report = {
        "latencyMs": {"p50": 1.5, "p90": 2.0, "p99": 3.0, "mean": 1.6, "max": 4.0, "min": 1.0, "stddev": 0.3},
        "requests": 200,
        "throughput": {"batchSize": 8, "concurrency": 4, "requestsPerSecond": 100.0, "itemsPerSecond": 800.0},
        "errors": 0,
        "notes": ["a note"],
    }
    key = benchflow.run_key(ms)
    ready = Condition("Ready", "True", "Available", "1/1 replicas ready")
    statuses = []
    for node, message in ((agent_node, compact_summary(report).decode()), (capacity_node, None)):
        # With a class of other nodes beside it, the placement records match expressions in nodeClass.
        placement = plan(ms.spec, [node, *mixed] if node is agent_node else [node], settings)
        job = {
            "metadata": {"name": "rfcn-bench-1", "labels": {LABEL_RUN_KEY: key}},
            "status": {"conditions": [
                {"type": "Complete", "status": "True", "lastTransitionTime": "2024-01-01T00:10:00Z"}
            ]},
        }  # fmt: skip
        terminated: dict[str, Any] = {"exitCode": 0} if message is None else {"exitCode": 0, "message": message}
        bench_pod = {
            "metadata": {"name": "rfcn-bench-1-x", "labels": {"job-name": "rfcn-bench-1"}},
            "status": {"containerStatuses": [{"name": "bench", "state": {"terminated": terminated}}]},
        }
        decision = benchflow.evaluate(
            ms, ready, jobs=[job], current=None, settings=settings, pods=[bench_pod], now="2024-01-01T01:00:00Z"
        )
        assert decision.status, "the benchmark flow wrote no status"
        fields = {
            "placement": placement.to_status(),
            "endpoints": endpoints(ms),
            "pods": [pod_view(pod).to_status({node.name: node})],
            "replicas": 1,
            "readyReplicas": 1,
            "selector": selector_string(ms),
            "benchmark": decision.status,
        }
        statuses.append(
            desired_status(None, generation=2, conditions=[ready], fields=fields, now="2024-01-01T00:00:00Z")
        )
    return statuses


def test_operator_status_survives_pruning(
    root: Schema,
    topo: Callable[..., Any],
    make_node: Callable[..., dict[str, Any]],
    make_ms: Callable[..., dict[str, Any]],
) -> None:
    """Every field the operator writes is in the status schema (the API server would drop it silently;
    a lost benchmark.runKey would rerun the benchmark on every reconcile)."""
    status_schema = root["properties"]["status"]
    for status in _operator_statuses(topo, make_node, make_ms):
        assert _pruned(status, status_schema) == status


def test_chart_copy_is_identical() -> None:
    assert CHART_CRD_PATH.read_bytes() == CRD_PATH.read_bytes(), (
        "charts/pinserve/crds/ is stale: run tools/gen_manifests.sh (make manifests)"
    )
