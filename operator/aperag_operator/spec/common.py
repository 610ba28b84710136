"""What every part of the spec shares: the base model, CEL rules, and the syntax of Kubernetes values.

The patterns are the API server's own rules (quantities, DNS names, label keys and values, image
references), so the CRD rejects at admission what the API server would otherwise reject only when the
operator applies a child, where the error would name the child's field instead of the user's.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints, WithJsonSchema
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

# --- quantities -------------------------------------------------------------------------------------------

_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
_SUFFIX = rf"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_NUMBER}))?"
#: resource.Quantity as the API server parses it (a sign is allowed).
QUANTITY_PATTERN = rf"^(\+|-)?{_NUMBER}{_SUFFIX}$"
#: An amount of a resource: no sign. A negative request or limit passes the quantity syntax but is
#: refused by the API server when the Deployment is applied.
AMOUNT_PATTERN = rf"^{_NUMBER}{_SUFFIX}$"
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)

#: A quantity written as a string or a number ("500m", "1Gi", 2), rendered int-or-string.
Quantity = Annotated[
    str | int,
    WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": AMOUNT_PATTERN}),
]
#: A quantity that is always a string (as KubeBlocks' CRD spells its amounts).
QuantityString = Annotated[str, StringConstraints(pattern=AMOUNT_PATTERN, max_length=64)]


def is_quantity(value: str) -> bool:
    """True when ``value`` is in Kubernetes quantity syntax."""
    return bool(_QUANTITY_RE.match(value))


# --- names, labels, images --------------------------------------------------------------------------------

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
#: A label or annotation key: an optional DNS-subdomain prefix and a name of at most 63 characters.
QUALIFIED_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
#: A label value: empty, or at most 63 characters of alphanumerics, '-', '_' and '.'.
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"

# The reference grammar of the distribution spec (github.com/distribution/reference): a domain with an
# optional port, path components, an optional tag and an optional digest. No spaces, no shell syntax.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
#: An image repository without tag or digest ("ghcr.io/acme/aperag", "registry:5000/aperag").
IMAGE_REPOSITORY_PATTERN = rf"^{_DOMAIN}{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$"
#: An image tag ("0.5.0", "v1.2-rc.1").
IMAGE_TAG_PATTERN = rf"^{_TAG}$"
#: A full image reference: repository, then a tag, a digest, or both.
IMAGE_REFERENCE_PATTERN = rf"^{_DOMAIN}{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*(?::{_TAG})?(?:@{_DIGEST})?$"


# --- the base model and CEL -------------------------------------------------------------------------------


def spec_config(**extra: Any) -> ConfigDict:
    """camelCase aliases, unknown fields an error; ``extra`` goes into the JSON schema (CEL rules)."""
    cfg = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
    if extra:
        cfg["json_schema_extra"] = extra
    return cfg


class Spec(BaseModel):
    """Base class of every spec model: camelCase aliases, unknown fields are an error."""

    model_config = spec_config()


def cel(rule: str, message: str, **more: str) -> JsonDict:
    """One ``x-kubernetes-validations`` rule (``fieldPath``, ``reason`` ... in ``more``)."""
    return {"rule": rule, "message": message, **more}


def validations(*rules: JsonDict) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules; the CRD generator copies ``x-kubernetes-*`` keys through."""
    return {"x-kubernetes-validations": list(rules)}


def keys_match(pattern: str, message: str) -> dict[str, Any]:
    """``json_schema_extra`` for a map whose keys must match ``pattern`` (a CEL raw string, so the
    pattern's backslashes reach RE2 as they are)."""
    return validations(cel(f"self.all(k, k.matches(r'{pattern}'))", message))
