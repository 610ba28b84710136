"""The CRD is generated from the pydantic model; the committed YAML must match it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from aperag_operator import crdgen
from pydantic import BaseModel, ConfigDict, Field

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "aperag.io_aperags.yaml"


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for name, prop in (node.get("properties") or {}).items():
            out += walk(prop, f"{path}.{name}")
        for sub in ("items", "additionalProperties"):
            if isinstance(node.get(sub), dict):
                out += walk(node[sub], f"{path}[]")
    return out


def schema() -> dict[str, Any]:
    crd = crdgen.build_crd()
    result: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return result


def test_committed_crd_is_up_to_date() -> None:
    assert CRD_PATH.read_text() == crdgen.render(), (
        "crds/aperag.io_aperags.yaml is stale: run "
        "`python -m aperag_operator.crdgen > crds/aperag.io_aperags.yaml`"
    )


def test_every_field_has_a_description() -> None:
    missing = [
        path
        for path, node in walk(schema())
        if path and not path.endswith("[]") and not node.get("description") and not path.endswith("metadata")
    ]
    missing = [p for p in missing if "." in p]
    assert not missing


def test_schema_is_structural() -> None:
    for path, node in walk(schema()):
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "title", "nullable", "const", "$defs"):
            assert banned not in node, f"{path}: {banned}"
        if "properties" in node:
            assert node.get("type") == "object", path
            assert "additionalProperties" not in node, path
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
        elif path and not node.get("x-kubernetes-preserve-unknown-fields"):
            assert "type" in node, path


def test_defaults_and_rules_present() -> None:
    spec = schema()["properties"]["spec"]
    comps = spec["properties"]["components"]
    assert comps["default"] == {}
    assert comps["properties"]["beat"]["default"]["replicas"] == 1  # completed: beat has CEL rules
    assert comps["properties"]["api"]["properties"]["replicas"]["default"] == 2
    beat = comps["properties"]["beat"]
    assert any(r["rule"] == "self.replicas == 1" for r in beat["x-kubernetes-validations"])
    cpu = comps["properties"]["api"]["properties"]["resources"]["properties"]["requests"]["properties"]["cpu"]
    assert cpu["x-kubernetes-int-or-string"] is True and "pattern" in cpu
    assert spec["required"] == ["version"]
    crd = crdgen.build_crd()
    version = crd["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Version", "Running", "Ready", "Phase", "Age"]
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["shortNames"] == ["apr"]


class _Inner(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [{"rule": "model-level", "message": "m"}]}
    )
    low: int = Field(default=1, description="low")
    high: int = Field(
        default=2,
        description="high",
        json_schema_extra={"x-kubernetes-validations": [{"rule": "field-level", "message": "f"}]},
    )


class _Outer(BaseModel):
    inner: _Inner = Field(
        default_factory=_Inner,
        description="inner",
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": "ref-level", "message": "r"}],
            "x-kubernetes-list-type": "x",
        },
    )
    maybe: str | None = Field(default=None, description="optional", json_schema_extra={"x-kubernetes-foo": 1})
    tags: dict[str, str] = Field(default_factory=lambda: {"a": "b"}, description="tags")


def test_kubernetes_extensions_pass_through_on_models_and_fields() -> None:
    out = crdgen.model_schema(_Outer)
    inner = out["properties"]["inner"]
    rules = [r["rule"] for r in inner["x-kubernetes-validations"]]
    assert rules == ["model-level", "ref-level"]
    assert inner["x-kubernetes-list-type"] == "x"
    assert inner["default"] == {"low": 1, "high": 2}
    assert inner["properties"]["high"]["x-kubernetes-validations"][0]["rule"] == "field-level"
    assert out["properties"]["maybe"] == {"type": "string", "description": "optional", "x-kubernetes-foo": 1}
    assert out["properties"]["tags"]["default"] == {"a": "b"}


def test_missing_description_fails_generation() -> None:
    class Bad(BaseModel):
        x: int = 1

    with pytest.raises(ValueError, match=r"Bad\.x"):
        crdgen.model_schema(Bad)


def test_committed_yaml_parses() -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    assert crd["metadata"]["name"] == "aperags.aperag.io"
