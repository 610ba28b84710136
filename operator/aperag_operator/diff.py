"""Does an observed child already match its desired form? (decides whether an apply is needed)

Server-side apply is only sent when it would change something, so a resync with nothing to do makes no
write request at all. Two checks, both local (no dry-run request, which the API server would count as a
write):

1. the ``aperag.io/spec-hash`` annotation of the observed object equals the desired one: the desired
   object did not change since it was last applied (this catches fields *removed* from the desired
   object, which a subset check cannot see);
2. the desired object is a *semantic subset* of the observed one: every field we set is present with
   the same value (this catches drift: someone edited or removed a field we own). Fields the server or
   other managers added are ignored, lists of named items are matched by name, quantities are compared
   by value (``0.5`` == ``500m``, ``1024Mi`` == ``1Gi``), and an empty desired value matches a missing one.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from aperag_operator.builders.common import SPEC_HASH_ANNOTATION, Obj

_SUFFIXES: dict[str, Decimal] = {
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_QUANTITY_KEYS = frozenset({"requests", "limits", "capacity"})


def parse_quantity(value: str | int | float) -> Decimal | None:
    """A Kubernetes quantity as a Decimal, or None when it is not one."""
    text = str(value).strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if suffix and text.endswith(suffix):
            number, factor = text[: -len(suffix)], _SUFFIXES[suffix]
            break
    else:
        number, factor = text, Decimal(1)
    try:
        return Decimal(number) * factor
    except InvalidOperation:
        return None


def _empty(value: Any) -> bool:
    return value is None or value == {} or value == []


def _scalar_equal(desired: Any, observed: Any, in_quantities: bool) -> bool:
    if desired == observed:
        return True
    if in_quantities and isinstance(desired, (str, int)) and isinstance(observed, (str, int)):
        a, b = parse_quantity(desired), parse_quantity(observed)
        return a is not None and a == b
    return False


def is_subset(desired: Any, observed: Any, *, _quantities: bool = False) -> bool:
    """Whether every field of ``desired`` is in ``observed`` with an equal value."""
    if isinstance(desired, dict):
        if not isinstance(observed, dict):
            return _empty(desired) and observed is None
        for key, value in desired.items():
            if key not in observed:
                if _empty(value):
                    continue
                return False
            if not is_subset(value, observed[key], _quantities=_quantities or key in _QUANTITY_KEYS):
                return False
        return True
    if isinstance(desired, list):
        if not isinstance(observed, list):
            return _empty(desired) and observed is None
        if len(desired) == len(observed):
            return all(
                is_subset(d, o, _quantities=_quantities) for d, o in zip(desired, observed, strict=True)
            )
        if desired and all(isinstance(d, dict) and "name" in d for d in desired):
            by_name = {o.get("name"): o for o in observed if isinstance(o, dict)}
            return all(
                d["name"] in by_name and is_subset(d, by_name[d["name"]], _quantities=_quantities)
                for d in desired
            )
        return False
    return _scalar_equal(desired, observed, _quantities)


def spec_hash(obj: Obj | None) -> str | None:
    if not obj:
        return None
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
    return str(value) if value is not None else None


def needs_apply(desired: Obj, observed: Obj | None) -> bool:
    """True when applying ``desired`` would change the observed object (or it does not exist)."""
    if observed is None:
        return True
    if spec_hash(desired) != spec_hash(observed):
        return True
    return not is_subset(desired, observed)


def list_repair_patch(desired: Obj, observed: Obj) -> Obj | None:
    """A JSON merge patch that puts back, whole, every list of ``desired`` (reached through maps only)
    that ``observed`` no longer matches; None when there is none.

    Server-side apply merges lists such as a Service's ports by a key other than the name (port and
    protocol): a port edited by hand then stays beside the one applied again, and the API server refuses
    the result (two ports named "http"). A merge patch replaces lists wholesale, so after it the apply
    converges. Only used when an apply of a drifted child was refused.
    """

    def walk(want: Any, have: Any) -> Any:
        if isinstance(want, dict) and isinstance(have, dict):
            out = {}
            for k, value in want.items():
                if k in ("metadata", "status"):
                    continue
                part = walk(value, have.get(k))
                if part is not None:
                    out[k] = part
            return out or None
        if isinstance(want, list):
            return None if is_subset(want, have) and len(want) == len(have or []) else want
        return None

    patch = walk(desired, observed)
    if patch is None:
        return None
    rv = (observed.get("metadata") or {}).get("resourceVersion")
    if rv:  # optimistic concurrency: refuse if the object changed since it was read
        patch["metadata"] = {"resourceVersion": rv}
    result: Obj = patch
    return result


def applies_field(obj: Obj | None, manager: str, path: tuple[str, ...]) -> bool:
    """Whether ``manager`` owns the field at ``path`` (e.g. ``("spec", "replicas")``) of ``obj`` through
    server-side apply, as its ``metadata.managedFields`` say. When such a manager applies a configuration
    without the field, the API server removes the field unless another manager also owns it."""
    for entry in ((obj or {}).get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("operation") != "Apply" or entry.get("subresource"):
            continue
        node: Any = entry.get("fieldsV1") or {}
        for part in path:
            node = node.get(f"f:{part}") if isinstance(node, dict) else None
            if node is None:
                break
        else:
            return True
    return False
