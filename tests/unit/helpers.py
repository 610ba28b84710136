"""Shared helpers for the unit tests."""

from __future__ import annotations

from typing import Any

from aperag_operator.builders.common import Instance
from aperag_operator.spec.model import parse_spec


def instance(spec: dict[str, Any] | None = None, name: str = "demo", namespace: str = "team-a") -> Instance:
    return Instance(
        name=name,
        namespace=namespace,
        uid="00000000-0000-0000-0000-000000000001",
        spec=parse_spec({"version": "0.5.0", **(spec or {})}),
        generation=3,
    )
