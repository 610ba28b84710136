"""What a feature contributes to one reconcile of one ApeRAG.

A contributor is a small object that, once per reconcile, reads what was observed (never the API
server: the :class:`Observed` view of the cache) and returns a frozen :class:`Contribution`: env for
the app containers, extra desired children, problems that gate the workloads, status fields and
conditions, Events, and when to be called again. It also declares, once, the kinds it watches (and of
those, the ones it owns: pruned when owned and no longer desired) and the Secrets whose changes wake
its resource up.

No hidden call order: a contributor sees another one's contribution only when it names it in
``requires``; the engine orders contributors by these declarations (and refuses a cycle) when it is
built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Protocol

from aperag_operator.builders.common import Instance, Obj, Release
from aperag_operator.cache import KindState
from aperag_operator.kinds import Kind, ObjKey
from aperag_operator.status import Problem

EventSpec = tuple[str, str, str]  # (type, reason, message)

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class Observed(Protocol):
    """Read-only view of the cache, scoped to one ApeRAG's namespace."""

    def get(self, kind: Kind, name: str) -> Obj | None: ...

    def owned(self, kind: Kind) -> list[Obj]:
        """Objects of ``kind`` with an owner reference to this ApeRAG."""
        ...

    def labeled(self, kind: Kind) -> list[Obj]:
        """Objects of ``kind`` labelled ``app.kubernetes.io/instance=<name>`` and managed by the operator."""
        ...

    def state(self, kind: Kind) -> KindState:
        """Whether ``kind`` is served and listed (NOT_INSTALLED when its CRD is missing)."""
        ...

    def secret_keys(self, name: str) -> frozenset[str] | None:
        """The key names of a Secret in the namespace (never values); None when it does not exist."""
        ...


@dataclass(frozen=True)
class Context:
    """Everything a contributor may know about the resource being reconciled."""

    instance: Instance
    annotations: Mapping[str, str]
    status: Mapping[str, Any]  # the status as last written (a restarted operator resumes from it)
    paused: bool
    observed: Observed
    now: datetime
    #: Problems the core found before any contributor ran (missing Secrets the spec references).
    prerequisites: tuple[Problem, ...] = ()


@dataclass(frozen=True)
class Contribution:
    env: tuple[Obj, ...] = ()
    children: tuple[Obj, ...] = ()
    problems: tuple[Problem, ...] = ()
    #: Top-level status fields owned by this contributor (e.g. ``databases``).
    status: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    #: Extra conditions (type, status, reason, message), after the core ones.
    conditions: tuple[Obj, ...] = ()
    events: tuple[EventSpec, ...] = ()
    #: Objects to delete (a contributor's own rule, e.g. a volume whose policy allows it).
    deletions: tuple[ObjKey, ...] = ()
    #: The release the Deployments run when it is not the spec's target (an upgrade or a rollback is
    #: under way). At most one contributor sets it.
    workload_release: Release | None = None
    #: Do not create or change any Deployment (a first install before its first migration).
    hold_workloads: bool = False
    #: ``status.phase`` while this contributor's operation runs (Migrating, RollingOut, ...).
    phase: str | None = None
    #: Run this resource's reconcile again after so many seconds (a Job to poll, a deadline).
    requeue_after: float | None = None
    #: Components whose Deployment's ``spec.replicas`` belongs to an autoscaler: their Deployments are
    #: built without it (handed over first, so the API server does not reset it), and the status and the
    #: upgrade health gate count the Deployment's live replicas instead of the spec's.
    autoscaled: frozenset[str] = frozenset()


class Contributor(Protocol):
    name: str
    requires: tuple[str, ...]
    #: Kinds watched for this contributor; ``owned_kinds`` among them are pruned when no longer desired.
    watched_kinds: tuple[Kind, ...]
    owned_kinds: tuple[Kind, ...]

    def secret_names(self, instance: Instance) -> frozenset[str]: ...

    def contribute(self, context: Context, upstream: Mapping[str, Contribution]) -> Contribution: ...


def ordered(contributors: list[Contributor]) -> list[Contributor]:
    """The contributors in an order where each comes after those it requires; a cycle or an unknown
    name is an error at start-up, not a surprise during a reconcile."""
    by_name = {c.name: c for c in contributors}
    if len(by_name) != len(contributors):
        raise ValueError("two contributors share a name")
    result: list[Contributor] = []
    done: set[str] = set()
    visiting: set[str] = set()

    def visit(c: Contributor) -> None:
        if c.name in done:
            return
        if c.name in visiting:
            raise ValueError(f"contributors require each other in a cycle through {c.name!r}")
        visiting.add(c.name)
        for needed in c.requires:
            if needed not in by_name:
                raise ValueError(f"contributor {c.name!r} requires unknown contributor {needed!r}")
            visit(by_name[needed])
        visiting.discard(c.name)
        done.add(c.name)
        result.append(c)

    for c in contributors:
        visit(c)
    return result
