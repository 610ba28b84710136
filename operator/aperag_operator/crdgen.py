"""Render the ApeRAG CustomResourceDefinition from the pydantic spec model.

``python -m aperag_operator.crdgen > crds/aperag.io_aperags.yaml``

The pydantic JSON schema is turned into a Kubernetes *structural* schema:

* ``$ref``/``$defs`` are inlined, ``title`` is dropped;
* ``Optional[X]`` (``anyOf [X, null]``) becomes plain ``X`` (the field is simply not required);
* ``default_factory`` defaults are rendered (nested objects as ``{}`` so their own defaults cascade;
  on nodes with CEL rules the default is completed, see :func:`fill_defaults`);
* ``additionalProperties: true`` becomes ``x-kubernetes-preserve-unknown-fields: true``;
* ``const`` becomes a one-value ``enum`` and a numeric ``exclusiveMinimum/Maximum`` the OpenAPI v3 boolean;
* any ``x-kubernetes-*`` key given through ``json_schema_extra`` on a model (``model_config``) or on a
  ``Field`` is passed through; ``x-kubernetes-validations`` of both levels are concatenated.

Every property must carry a description; generation fails otherwise.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema, to_jsonable_python

from aperag_operator.builders.naming import longest_suffix, max_name_length
from aperag_operator.spec.model import (
    API_GROUP,
    API_VERSION,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    ApeRAGSpec,
    ApeRAGStatus,
)

Schema = dict[str, Any]


class _CRDJsonSchema(GenerateJsonSchema):
    """Renders ``default_factory`` values as defaults (pydantic leaves them out)."""

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return super().default_schema(schema)
        inner = self.generate_inner(schema["schema"])
        value = factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            default: Any = {}  # the nested defaults cascade (see fill_defaults for nodes with rules)
        else:
            default = to_jsonable_python(value)
            if default in ([], {}):
                return inner
        return {**inner, "default": default}


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


def _merge(base: Schema, overlay: Schema) -> Schema:
    out = dict(base)
    for key, value in overlay.items():
        if key == "x-kubernetes-validations" and key in out:
            out[key] = [*out[key], *value]
        else:
            out[key] = value
    return out


def to_structural(node: Any, defs: dict[str, Schema], path: str = "") -> Any:
    """Convert one pydantic JSON schema node (recursively) into a structural OpenAPI v3 schema."""
    if isinstance(node, list):
        return [to_structural(v, defs, path) for v in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = _merge(copy.deepcopy(target), node)
    for combinator in ("anyOf", "allOf", "oneOf"):
        if combinator in node:
            variants = [v for v in node.pop(combinator) if v != {"type": "null"}]
            if len(variants) != 1:
                raise ValueError(
                    f"{path or '<root>'}: cannot render {combinator} with {len(variants)} variants"
                )
            variant = variants[0]
            if "$ref" in variant:
                variant = _merge(copy.deepcopy(defs[variant["$ref"].rsplit("/", 1)[-1]]), {})
            node = _merge(variant, node)
            return to_structural(node, defs, path)
    node.pop("title", None)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node and not isinstance(node[bound], bool):
            node[plain] = node[bound]
            node[bound] = True
    if "default" in node:
        if node["default"] is None:
            del node["default"]
        else:
            node["default"] = _strip_none(node["default"])
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]  # extra="forbid": structural schemas prune unknown fields instead
    if node.get("additionalProperties") is True:
        del node["additionalProperties"]
        node["x-kubernetes-preserve-unknown-fields"] = True
        node.setdefault("type", "object")
    if node.get("x-kubernetes-int-or-string"):
        node.pop("type", None)
    out: Schema = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_structural(prop, defs, f"{path}.{name}") for name, prop in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_structural(value, defs, f"{path}[]")
        else:
            out[key] = value
    if "required" in out and not out["required"]:
        del out["required"]
    return out


def fill_defaults(node: Any) -> None:
    """Complete object defaults that CEL rules will see.

    The API server validates every ``default`` against the rules of its own node, *without* applying
    the nested defaults first; at run time those nested defaults are applied anyway. So an object
    default such as ``{}`` on a node with rules is filled with its properties' defaults (the result
    is what the API server would store), bottom-up.
    """
    if not isinstance(node, dict):
        return
    for prop in (node.get("properties") or {}).values():
        fill_defaults(prop)
    for sub in ("items", "additionalProperties"):
        fill_defaults(node.get(sub))
    default = node.get("default")
    if isinstance(default, dict) and node.get("properties") and node.get("x-kubernetes-validations"):
        node["default"] = _complete(default, node)


def _complete(value: dict[str, Any], node: Schema) -> dict[str, Any]:
    out = dict(value)
    for name, prop in (node.get("properties") or {}).items():
        if name not in out and "default" in prop:
            out[name] = copy.deepcopy(prop["default"])
        elif (
            isinstance(out.get(name), dict)
            and prop.get("properties")
            and prop.get("x-kubernetes-validations")
        ):
            out[name] = _complete(out[name], prop)
    return out


def _check_descriptions(node: Schema, path: str, missing: list[str]) -> None:
    for name, prop in node.get("properties", {}).items():
        sub = f"{path}.{name}"
        if not prop.get("description"):
            missing.append(sub)
        _check_descriptions(prop, sub, missing)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            _check_descriptions(node[key], f"{path}[]", missing)


def model_schema(model: type[BaseModel]) -> Schema:
    """The structural schema of one pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_CRDJsonSchema)
    defs = raw.pop("$defs", {})
    schema: Schema = to_structural(raw, defs)
    fill_defaults(schema)
    missing: list[str] = []
    _check_descriptions(schema, model.__name__, missing)
    if missing:
        raise ValueError("fields without a description: " + ", ".join(missing))
    return schema


def build_crd() -> dict[str, Any]:
    """The complete CustomResourceDefinition as a plain dict."""
    spec_schema = model_schema(ApeRAGSpec)
    status_schema = model_schema(ApeRAGStatus)
    spec_schema["description"] = "Desired state of the ApeRAG deployment."
    status_schema["description"] = "Observed state, written by the operator."
    max_name = max_name_length()
    longest_what, longest = longest_suffix()
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{API_GROUP}",
            "labels": {"app.kubernetes.io/name": "aperag-operator", "app.kubernetes.io/part-of": "aperag"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["all", "aperag"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {
                            "name": "Version",
                            "type": "string",
                            "jsonPath": ".spec.version",
                            "description": "ApeRAG version asked for.",
                        },
                        {
                            "name": "Running",
                            "type": "string",
                            "jsonPath": ".status.version",
                            "description": "ApeRAG version that is running.",
                        },
                        {
                            "name": "Ready",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                            "description": "The Ready condition.",
                        },
                        {
                            "name": "Phase",
                            "type": "string",
                            "jsonPath": ".status.phase",
                            "description": "Summary of the state.",
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "ApeRAG is a complete ApeRAG deployment (API with its web console, workers, "
                            "scheduler) managed by the aperag-operator.",
                            "required": ["spec"],
                            "x-kubernetes-validations": [
                                {
                                    "rule": f"size(self.metadata.name) <= {max_name}",
                                    "message": f"metadata.name must be at most {max_name} characters: "
                                    f"the longest name derived from it ({longest_what}) adds {longest} "
                                    "and must fit in 63",
                                }
                            ],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "APIVersion of the object."},
                                "kind": {"type": "string", "description": "Kind of the object."},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    """The CRD as YAML text (what is committed in crds/)."""
    header = (
        "# Generated by `python -m aperag_operator.crdgen` from aperag_operator/spec/model.py. Do not edit.\n"
    )
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
