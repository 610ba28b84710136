"""The upgrade machine's inputs, observations and decision (frozen; no I/O anywhere in the package)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aperag_operator.builders.backup_opsrequest import BackupRequest
from aperag_operator.builders.common import Release, target_release
from aperag_operator.builders.migration_job import MigrationJobRequest
from aperag_operator.spec.model import ApeRAGSpec, UpgradeSpec
from aperag_operator.status import ComponentState, Problem

#: Annotation on the ApeRAG: a new value retries a target that failed (or was refused).
RETRY_ANNOTATION = "aperag.io/retry-upgrade"


@dataclass(frozen=True)
class UpgradeInputs:
    """What the spec and the other gates say."""

    name: str
    namespace: str
    spec: ApeRAGSpec
    #: The other gates (databases ready, Secrets present): no step that starts something (a Job, a
    #: backup, a new operation) is taken while they are closed; results of running steps are recorded.
    gates_open: bool = True
    gates_reason: str = ""
    #: ``aperag.io/paused``: the machine is frozen (no Job, no rollout, no transition).
    paused: bool = False
    #: The value of ``aperag.io/retry-upgrade`` (None when absent).
    retry_token: str | None = None
    #: The managed PostgreSQL Cluster (the backup's target); None for an external PostgreSQL.
    postgres_cluster: str | None = None

    @property
    def target(self) -> Release:
        return target_release(self.spec)

    @property
    def upgrade(self) -> UpgradeSpec:
        return self.spec.upgrade


@dataclass(frozen=True)
class MigrationReport:
    """The app's report (docs/app.md), parsed from a migration pod's termination message."""

    ok: bool
    action: str = ""
    reason: str | None = None
    message: str = ""
    #: Revisions before and after the run; None when the run did not read them.
    before: tuple[str, ...] | None = None
    current: tuple[str, ...] | None = None
    #: Whether the run moved the schema; None when the report does not say.
    changed: bool | None = None


JobState = Literal["Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class JobObservation:
    """A migration Job as observed (see :func:`aperag_operator.upgrade.observe_job`)."""

    name: str
    state: JobState
    #: The Job's Failed condition reason (DeadlineExceeded, BackoffLimitExceeded, PodFailurePolicy).
    reason: str = ""
    message: str = ""
    report: MigrationReport | None = None
    #: The termination message when it is not a report (FallbackToLogsOnError: the end of the log).
    log_tail: str = ""


@dataclass(frozen=True)
class BackupObservation:
    """A Backup OpsRequest as observed: KubeBlocks' ``status.phase`` ("" before KubeBlocks saw it)."""

    name: str
    phase: str
    message: str = ""


@dataclass(frozen=True)
class DeploymentObservation:
    """One component's Deployment: the release its pod template runs and its rolled-up readiness."""

    #: The pod template's app.kubernetes.io/version label.
    version: str | None
    #: The image of the pod template's first container.
    image: str | None
    state: ComponentState


@dataclass(frozen=True)
class UpgradeObserved:
    """What exists: the ApeRAG's migration Jobs and Backup OpsRequests (only those it owns), and its
    Deployments by component (a component without a Deployment is absent)."""

    jobs: Mapping[str, JobObservation] = field(default_factory=dict)
    backups: Mapping[str, BackupObservation] = field(default_factory=dict)
    deployments: Mapping[str, DeploymentObservation] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class UpgradeDecision:
    """What to do now. Desired objects are descriptions: build them with
    ``builders.migration_job.build(inst, request)`` and ``builders.backup_opsrequest.build(inst, request)``.
    """

    #: The next ``status.upgrade`` (camelCase), None while nothing was ever started.
    upgrade: dict[str, Any] | None
    #: The next ``status.history`` (newest last, at most spec.upgrade.historyLimit entries).
    history: list[dict[str, Any]]
    #: ``status.version``: the running version (None before the first install passed its health gate).
    version: str | None
    #: The release the Deployments must run (``Instance.release``); None = HOLD: do not create or change
    #: any Deployment (a first install before its first migration succeeded; paused).
    deployments: Release | None
    #: The migration Job that must exist (at most one). Create it when missing; never update or delete a
    #: Job (ttlSecondsAfterFinished removes it); a Job whose result is recorded is never asked for again.
    jobs: tuple[MigrationJobRequest, ...]
    #: The Backup OpsRequest that must exist (at most one); create-only like the Jobs.
    backups: tuple[BackupRequest, ...]
    #: For the status: waits (``degraded=False``: BackingUp, Migrating, RollingOut, RollingBack) and
    #: failures (MigrationFailed, MultipleHeads, RolloutFailed, RollbackFailed, UnknownVersion,
    #: BackupFailed). ``blocks_workloads`` is always False: ``deployments`` says what the Deployments do.
    problems: tuple[Problem, ...]
    #: ``status.phase`` while an operation is under way (BackingUp, Migrating, RollingOut, RollingBack);
    #: None: let the status roll-up decide (Ready, Degraded, ...).
    phase: str | None
    #: Kubernetes Events for the transitions this call made, in order (none when nothing changed).
    events: tuple[Event, ...]
    #: Seconds until a deadline of the current step (call again then even if nothing happened).
    requeue_after: float | None

    def status_fields(self) -> dict[str, Any]:
        """``upgrade``, ``history`` and ``version`` to merge into the status (unset ones left out)."""
        out: dict[str, Any] = {"history": self.history}
        if self.upgrade is not None:
            out["upgrade"] = self.upgrade
        if self.version is not None:
            out["version"] = self.version
        return out
