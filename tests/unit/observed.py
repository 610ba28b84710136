"""A fixed, in-memory ``contributors.base.Observed`` for pure tests: what the cache would hold."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aperag_operator.cache import KindState, owner_of, parent_of
from aperag_operator.kinds import Kind

Obj = dict[str, Any]


@dataclass
class StaticObserved:
    namespace: str = "team-a"
    name: str = "demo"
    objects: dict[tuple[str, str], Obj] = field(default_factory=dict)  # (type_path, name) -> object
    secrets: dict[str, frozenset[str]] = field(default_factory=dict)
    states: dict[str, KindState] = field(default_factory=dict)

    def add(self, kind: Kind, *objs: Obj) -> StaticObserved:
        for obj in objs:
            self.objects[(kind.type_path, obj["metadata"]["name"])] = obj
        return self

    def with_secrets(self, secrets: dict[str, Iterable[str]]) -> StaticObserved:
        self.secrets.update({k: frozenset(v) for k, v in secrets.items()})
        return self

    def get(self, kind: Kind, name: str) -> Obj | None:
        return self.objects.get((kind.type_path, name))

    def owned(self, kind: Kind) -> list[Obj]:
        return [o for (t, _), o in sorted(self.objects.items()) if t == kind.type_path and owner_of(o) is not None]

    def labeled(self, kind: Kind) -> list[Obj]:
        return [
            o
            for (t, _), o in sorted(self.objects.items())
            if t == kind.type_path and parent_of(o) == (self.namespace, self.name)
        ]

    def state(self, kind: Kind) -> KindState:
        return self.states.get(kind.type_path, KindState.LISTED)

    def secret_keys(self, name: str) -> frozenset[str] | None:
        return self.secrets.get(name)
