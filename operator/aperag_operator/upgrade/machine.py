"""The upgrade state machine: ``decide(inputs, previous status, observed, now) -> decision``.

Pure and deterministic: the same inputs, status and observations always give the same decision, and a
decision applied to its own status with the same observations changes nothing (so a restarted operator
resumes from ``status.upgrade`` and the Jobs it names). Each call runs transitions until none applies
for what is observed; a transition that would start something new (an operation, a Job, a backup) is
not taken while the other gates are closed. docs/design.md ("Upgrades") has the diagram.

Operations: Install (nothing ran before), Upgrade, Rollback (spec.version set back to an older version
recorded in status.history). Steps: BackingUp -> Migrating -> RollingOut -> Complete for Install and
Upgrade; BackingUp -> RollingOut -> Downgrading -> Complete for a Rollback (the old pods first: they
serve on the newer schema by the compatibility contract, then the schema goes down). A failure returns
to the running release: RollingBack (Deployments back, when they had moved) -> Downgrading (the new
image downgrades to the running release's revision, when the schema had moved) -> Failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from aperag_operator.builders import backup_opsrequest, deployment, migration_job
from aperag_operator.builders.backup_opsrequest import BackupRequest
from aperag_operator.builders.common import Release
from aperag_operator.builders.migration_job import MigrationJobRequest
from aperag_operator.spec.model import HistoryEntry, UpgradeStatus
from aperag_operator.status import Problem
from aperag_operator.upgrade.records import (
    BASE,
    SUCCEEDED,
    known_revision,
    older,
    record_of,
    ref_of,
    release_of,
    revision_of,
    trimmed,
)
from aperag_operator.upgrade.types import (
    Event,
    JobObservation,
    MigrationReport,
    UpgradeDecision,
    UpgradeInputs,
    UpgradeObserved,
)

# Steps (status.upgrade.phase) and how operations end.
BACKING_UP, MIGRATING, ROLLING_OUT, ROLLING_BACK, DOWNGRADING = (
    "BackingUp",
    "Migrating",
    "RollingOut",
    "RollingBack",
    "Downgrading",
)
COMPLETE, FAILED, ROLLBACK_FAILED, REFUSED = "Complete", "Failed", "RollbackFailed", "Refused"
ACTIVE = frozenset({BACKING_UP, MIGRATING, ROLLING_OUT, ROLLING_BACK, DOWNGRADING})
STOPPED = frozenset({FAILED, ROLLBACK_FAILED, REFUSED})
INSTALL, UPGRADE, ROLLBACK = "Install", "Upgrade", "Rollback"

# Reasons (conditions, history).
MIGRATION_FAILED = "MigrationFailed"
MULTIPLE_HEADS = "MultipleHeads"
ROLLOUT_FAILED = "RolloutFailed"
BACKUP_FAILED = "BackupFailed"
UNKNOWN_VERSION = "UnknownVersion"
CANCELLED = "Cancelled"

#: How long past its own deadline a Job (or backup) that never appeared is waited for.
START_GRACE_SECONDS = 300
#: The longest pause between two looks at a step with no deadline left (e.g. a Job past its deadline
#: that the Job controller has not failed yet: it is never interrupted, only looked at again).
RECHECK_SECONDS = 60
MAX_TRANSITIONS = 16
#: Kubernetes keeps at most 1024 characters of an Event's message.
EVENT_MESSAGE_LIMIT = 1024


def _ts(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


State = UpgradeStatus
Step = tuple[State, list[Event]]


@dataclass
class _Machine:
    inputs: UpgradeInputs
    observed: UpgradeObserved
    now: datetime
    history: list[HistoryEntry]
    events: list[Event] = field(default_factory=list)

    # --- facts ---------------------------------------------------------------------------------------

    @property
    def target(self) -> Release:
        return self.inputs.target

    @property
    def stamp(self) -> str:
        return _ts(self.now)

    def components(self) -> list[str]:
        return deployment.enabled_components_of(self.inputs.spec)

    def at_release(self, component: str, release: Release) -> bool:
        obs = self.observed.deployments.get(component)
        expected = deployment.release_image(self.inputs.spec, component, release)
        return obs is not None and obs.version == release.version and obs.image == expected

    def serving(self, release: Release) -> bool:
        """The health gate: every enabled component's Deployment runs ``release``, updated and available."""
        return all(
            self.at_release(c, release) and self.observed.deployments[c].state.is_ready for c in self.components()
        )

    def not_serving(self, release: Release) -> str:
        parts = []
        for component in self.components():
            obs = self.observed.deployments.get(component)
            if obs is None:
                parts.append(f"{component}: no Deployment")
            elif not self.at_release(component, release):
                parts.append(f"{component}: at {obs.version} ({obs.image})")
            elif not obs.state.is_ready:
                st = obs.state
                failure = f", {st.failure}" if st.failure else ""
                parts.append(f"{component}: {st.ready}/{st.desired} ready, {st.updated} updated{failure}")
        return "; ".join(parts)

    def adopted(self) -> Release | None:
        """The release existing Deployments run when there is no upgrade status yet (installed before the
        operator managed upgrades): read from the first app component that runs the app image."""
        for component in ("api", "worker", "beat", "flower"):
            if component not in self.components() or deployment.component_spec_of(self.inputs.spec, component).image:
                continue
            obs = self.observed.deployments.get(component)
            if obs is not None and obs.version and obs.image:
                return Release(obs.version, obs.image)
        return None

    def elapsed(self, state: State) -> float:
        started = _parse_ts(state.step_started_at) or self.now
        return (self.now - started).total_seconds()

    def emit(self, reason: str, message: str, warning: bool = False) -> None:
        if len(message) > EVENT_MESSAGE_LIMIT:
            message = message[: EVENT_MESSAGE_LIMIT - 3] + "..."
        self.events.append(Event("Warning" if warning else "Normal", reason, message))

    # --- history -------------------------------------------------------------------------------------

    def record(self, state: State, outcome: str, reason: str | None = None, message: str = "") -> None:
        assert state.target is not None
        self.history.append(
            HistoryEntry(
                version=state.target.version,
                image=state.target.image,
                revision=state.target.revision,
                from_version=state.running.version if state.running else None,
                operation=state.operation,
                outcome=outcome,
                reason=reason,
                message=message,
                started_at=state.started_at,
                finished_at=self.stamp,
            )
        )
        self.history[:] = trimmed(self.history, self.inputs.upgrade.history_limit)

    # --- requests --------------------------------------------------------------------------------------

    def job_request(self, state: State) -> MigrationJobRequest | None:
        assert state.target is not None
        if state.phase == MIGRATING:
            return migration_job.request(self.inputs.name, "upgrade", release_of(state.target), "head", state.attempt)
        if state.phase == DOWNGRADING:
            image, revision = self.downgrade_plan(state)
            assert revision is not None
            return migration_job.request(self.inputs.name, "downgrade", image, revision, state.attempt)
        return None

    def downgrade_plan(self, state: State) -> tuple[Release, str | None]:
        """(the release whose image runs the downgrade, the revision to downgrade to). Always the newer
        image: only it knows how to undo its revisions."""
        assert state.target is not None and state.running is not None
        if state.operation == ROLLBACK:
            return release_of(state.running), state.target.revision
        return release_of(state.target), state.running.revision

    def backup_request(self, state: State) -> BackupRequest | None:
        if state.phase != BACKING_UP or self.inputs.postgres_cluster is None:
            return None
        assert state.target is not None
        return backup_opsrequest.request(
            self.inputs.name, self.inputs.postgres_cluster, release_of(state.target), state.attempt
        )

    # --- the transitions -------------------------------------------------------------------------------

    def step(self, state: State | None) -> State | None:
        if state is None:
            return self.plan(None)
        if state.phase in ACTIVE:
            handler: dict[str, Callable[[State], State | None]] = {
                BACKING_UP: self.backing_up,
                MIGRATING: self.migrating,
                ROLLING_OUT: self.rolling_out,
                ROLLING_BACK: self.rolling_back,
                DOWNGRADING: self.downgrading,
            }
            return handler[state.phase](state)
        return self.settled(state)

    def settled(self, state: State) -> State | None:
        running = release_of(state.running) if state.running else None
        if running == self.target:
            if state.phase == COMPLETE and state.deployed == ref_of(running):
                return None
            # The spec names what runs (again): nothing to do; a failed target is let go.
            return state.model_copy(
                update={
                    "phase": COMPLETE,
                    "target": state.running,
                    "deployed": ref_of(running),
                    "job": None,
                    "seen": False,
                    "reason": None,
                    "message": f"{running.version} is running",
                    "stopped_for": None,
                    "retry_token": None,
                }
            )
        if state.phase in STOPPED and self.stopped(state):
            return None
        return self.plan(state)

    def stopped(self, state: State) -> bool:
        """Still stopped: the spec names the same release and nobody asked for a retry."""
        return state.stopped_for == ref_of(self.target) and state.retry_token == self.inputs.retry_token

    def plan(self, previous: State | None) -> State | None:
        """A new operation towards the spec's release."""
        target = self.target
        attempt = (previous.attempt if previous else 0) + 1
        running_record = previous.running if previous else None
        adopting = previous is None and self.adopted() is not None
        if adopting:
            adopted = self.adopted()
            assert adopted is not None
            running_record = record_of(adopted)
        running = release_of(running_record) if running_record else None
        record = known_revision(self.history, target)
        same_schema = bool(
            record and running_record and running_record.revision and record.revision == running_record.revision
        )
        is_older = older(target.version, running.version) if running else None
        if running is None:
            operation = INSTALL
        elif adopting or not (is_older or same_schema):
            operation = UPGRADE  # newer, or not orderable: its own migration Job tells (UnknownRevision)
        elif record is not None:
            operation = ROLLBACK if is_older is not False else UPGRADE
        else:
            return self.refuse(previous, running_record, attempt, f"is older than the running {running.version}")
        deployed = previous.deployed if previous else (ref_of(running) if running else None)
        # A rollback (or a release on the same schema) knows its revision from the record; an upgrade learns
        # it from its migration Job.
        known = record.revision if record is not None and (operation == ROLLBACK or same_schema) else None
        state = State(
            phase=COMPLETE,  # replaced by the first step below
            operation=operation,
            running=running_record,
            target=record_of(target, known),
            deployed=deployed,
            attempt=attempt,
            database_revision=previous.database_revision if previous else None,
            started_at=self.stamp,
            step_started_at=self.stamp,
        )
        words = {
            INSTALL: "installing {t}",
            UPGRADE: "upgrading from {r} to {t}",
            ROLLBACK: "rolling back from {r} to {t}",
        }
        story = words[operation].format(t=target.version, r=running.version if running else "")
        if adopting and running == target:
            story = f"adopting {target.version}: running its migrations once"
        self.emit(f"{operation}Started", story)
        needs_job = self.inputs.upgrade.run_migrations and not same_schema
        if needs_job and running is not None and self.inputs.upgrade.backup_before_upgrade:
            if self.inputs.postgres_cluster is not None:
                return self.start_backup(state)
            state = state.model_copy(
                update={"backup_message": "no backup taken: PostgreSQL is external (spec.databases.postgresql)"}
            )
            self.emit("BackupSkipped", "no backup taken: PostgreSQL is external")
        return self.forward(state, same_schema)

    def forward(self, state: State, same_schema: bool = False) -> State:
        """The operation's first step after the (optional) backup."""
        assert state.target is not None
        target = release_of(state.target)
        if state.operation == ROLLBACK:
            return self.start_rollout(state)
        if self.inputs.upgrade.run_migrations and not same_schema:
            return self.start_job(state, MIGRATING)
        note = ""
        if not self.inputs.upgrade.run_migrations:
            note = "migrations skipped: spec.upgrade.runMigrations is false (migrate by hand)"
            self.emit("MigrationSkipped", f"{note}; rolling out {target.version}")
        return self.start_rollout(state, note)

    def refuse(self, previous: State | None, running: Any, attempt: int, why: str) -> State:
        target = self.target
        serving = running.version if running else "nothing"
        message = (
            f"version {target.version} ({target.image}) {why} and has no record in status.history: the schema "
            f"revision to downgrade to is unknown, so nothing was changed and {serving} keeps running. Set "
            "spec.version back, or downgrade the schema by hand first (`aperag migrate downgrade <revision>` with "
            "the running image)"
        )
        self.emit("UpgradeRefused", message, warning=True)
        base = previous or State(
            phase=REFUSED, operation=UPGRADE, running=running, deployed=ref_of(release_of(running))
        )
        return base.model_copy(
            update={
                "phase": REFUSED,
                "operation": UPGRADE,
                "running": running,
                "target": record_of(target),
                "attempt": attempt,
                "job": None,
                "seen": False,
                "reason": UNKNOWN_VERSION,
                "message": message,
                "started_at": self.stamp,
                "step_started_at": self.stamp,
                "finished_at": self.stamp,
                "stopped_for": ref_of(target),
                "retry_token": self.inputs.retry_token,
            }
        )

    # step starts

    def start_backup(self, state: State) -> State:
        state = state.model_copy(update={"phase": BACKING_UP, "step_started_at": self.stamp, "seen": False})
        request = self.backup_request(state)
        assert request is not None
        self.emit("BackupStarted", f"backing up PostgreSQL ({request.cluster}) with OpsRequest {request.name}")
        return state.model_copy(
            update={"backup": request.name, "message": f"backing up PostgreSQL with OpsRequest {request.name}"}
        )

    def start_job(self, state: State, phase: str) -> State:
        state = state.model_copy(update={"phase": phase, "step_started_at": self.stamp, "seen": False})
        request = self.job_request(state)
        assert request is not None
        what = f"Job {request.name} (aperag migrate {request.action} {request.revision}, image {request.release.image})"
        if phase == MIGRATING:
            self.emit("MigrationStarted", f"running migration {what}")
            message = f"migrating the schema with {what}"
        else:
            self.emit("DowngradeStarted", f"running downgrade {what}")
            message = f"downgrading the schema with {what}"
        if state.reason and state.reason != CANCELLED:
            message = f"{self.failure_detail(state)}; rolling back: {message}"
        return state.model_copy(update={"job": request.name, "message": message})

    def start_rollout(self, state: State, note: str = "") -> State:
        assert state.target is not None
        target = release_of(state.target)
        word = ROLLING_BACK if state.operation == ROLLBACK else ROLLING_OUT
        self.emit(word, f"rolling the Deployments to {target.version} ({target.image})")
        note = f"{note}; " if note else ""
        return state.model_copy(
            update={
                "phase": ROLLING_OUT,
                "deployed": ref_of(target),
                "job": None,
                "seen": False,
                "step_started_at": self.stamp,
                "message": f"{note}rolling the Deployments to {target.version}; waiting until every component is "
                f"updated and available (at most {self.inputs.upgrade.progress_deadline_seconds}s)",
            }
        )

    def start_restore(self, state: State) -> State:
        assert state.running is not None
        running = release_of(state.running)
        self.emit(ROLLING_BACK, f"rolling the Deployments back to {running.version} ({running.image})")
        detail = self.failure_detail(state)
        return state.model_copy(
            update={
                "phase": ROLLING_BACK,
                "deployed": ref_of(running),
                "job": None,
                "seen": False,
                "step_started_at": self.stamp,
                "message": f"{detail}; rolling back: the Deployments go back to {running.version}",
            }
        )

    # the steps

    def backing_up(self, state: State) -> State | None:
        assert state.backup is not None and state.running is not None
        obs = self.observed.backups.get(state.backup)
        cancelled = release_of(state.target) != self.target if state.target else False
        if obs is None:
            deadline = self.inputs.upgrade.backup_timeout_seconds + START_GRACE_SECONDS
            if state.seen or self.elapsed(state) > deadline:
                gone = "disappeared before it finished" if state.seen else "was never created"
                if cancelled:
                    return self.cancel(state)
                return self.backup_failed(state, f"OpsRequest {state.backup} {gone}")
            return None
        if obs.phase in backup_opsrequest.SUCCEEDED_PHASES:
            message = f"backup OpsRequest {obs.name} succeeded"
            self.emit("BackupSucceeded", message)
            state = state.model_copy(update={"backup_message": message, "seen": True})
            return self.cancel(state) if cancelled else self.forward(state)
        if obs.phase in backup_opsrequest.FAILED_PHASES:
            if cancelled:
                return self.cancel(state)
            return self.backup_failed(state, f"backup OpsRequest {obs.name} {obs.phase}: {obs.message}".rstrip(": "))
        if self.elapsed(state) > self.inputs.upgrade.backup_timeout_seconds + START_GRACE_SECONDS:
            if cancelled:
                return self.cancel(state)
            return self.backup_failed(state, f"OpsRequest {obs.name} never finished")
        return state.model_copy(update={"seen": True}) if not state.seen else None

    def backup_failed(self, state: State, detail: str) -> State:
        assert state.running is not None
        self.emit(BACKUP_FAILED, detail, warning=True)
        message = f"{detail}; nothing was changed: {state.running.version} keeps serving"
        return self.stop(state.model_copy(update={"backup_message": detail}), FAILED, BACKUP_FAILED, message)

    def job_result(self, state: State) -> JobObservation | str | None:
        """The current step's Job: its observation, None while waiting, or why it is lost."""
        assert state.job is not None
        obs = self.observed.jobs.get(state.job)
        if obs is not None:
            return obs
        if state.seen:
            return f"Job {state.job} disappeared before its result was read"
        if self.elapsed(state) > self.inputs.upgrade.migration_timeout_seconds + START_GRACE_SECONDS:
            return f"Job {state.job} was never created (or never started)"
        return None

    def migrating(self, state: State) -> State | None:
        assert state.target is not None
        cancelled = release_of(state.target) != self.target
        result = self.job_result(state)
        if result is None:
            return None
        if isinstance(result, str):
            lost = "disappeared" in result
            state = state.model_copy(update={"schema_changed": lost})
            if cancelled:
                return self.cancel(state)
            self.emit(MIGRATION_FAILED, result, warning=True)
            return self.fail(state, MIGRATION_FAILED, result)
        if result.state == "Running":
            return state.model_copy(update={"seen": True}) if not state.seen else None
        report = result.report
        state = self.learn(state, report)
        assert state.target is not None
        if result.state == "Succeeded":
            revision = revision_of(report.current) if report else None
            changed = report.changed if report and report.changed is not None else True
            target = record_of(release_of(state.target), revision)
            state = state.model_copy(update={"target": target, "schema_changed": changed})
            if cancelled:
                return self.cancel(state)
            reached = f"schema at revision {revision}" if revision else "no report: schema revision unknown"
            self.emit("MigrationSucceeded", f"Job {result.name} succeeded: {reached}")
            return self.start_rollout(state)
        changed = report.changed if report and report.changed is not None else True
        state = state.model_copy(update={"schema_changed": changed})
        if cancelled:
            return self.cancel(state)
        detail = self.job_failure(result, MIGRATING)
        if report and report.reason == "UnknownRevision" and not changed and state.running is not None:
            return self.database_is_newer(state, detail)
        reason = MULTIPLE_HEADS if report and report.reason == MULTIPLE_HEADS else MIGRATION_FAILED
        self.emit(MIGRATION_FAILED, detail, warning=True)
        return self.fail(state, reason, detail)

    def database_is_newer(self, state: State, detail: str) -> State:
        """The target's own migrations do not know the database's revision: it is older than what ran.
        With a record of its revision this is a rollback; without one it is refused."""
        assert state.running is not None
        record = known_revision(self.history, self.target)
        if record is None:
            return self.refuse(state, state.running, state.attempt, f"does not know the database's schema ({detail})")
        self.emit("RollbackStarted", f"{detail}: {self.target.version} is older; rolling back to it")
        state = state.model_copy(
            update={
                "operation": ROLLBACK,
                "target": state.target.model_copy(update={"revision": record.revision}) if state.target else None,
                "schema_changed": False,
            }
        )
        return self.start_rollout(state)

    def learn(self, state: State, report: MigrationReport | None) -> State:
        """What a report teaches: the database's revision, and the running release's when unknown."""
        if report is None:
            return state
        update: dict[str, Any] = {"seen": True}
        if report.current is not None:
            update["database_revision"] = revision_of(report.current)
        if state.running is not None and state.running.revision is None and report.before is not None:
            update["running"] = state.running.model_copy(update={"revision": revision_of(report.before)})
        return state.model_copy(update=update)

    def job_failure(self, job: JobObservation, phase: str) -> str:
        what = "migration" if phase == MIGRATING else "downgrade"
        if job.report is not None and job.report.reason:
            return f"{what} Job {job.name} failed: {job.report.reason}: {job.report.message}".rstrip(": ")
        if job.reason == "DeadlineExceeded":
            seconds = self.inputs.upgrade.migration_timeout_seconds
            return f"{what} Job {job.name} timed out after {seconds}s (spec.upgrade.migrationTimeoutSeconds)"
        tail = f": {job.log_tail[-500:]}" if job.log_tail else ""
        return f"{what} Job {job.name} failed ({job.reason or 'no report'}){tail}"

    def rolling_out(self, state: State) -> State | None:
        assert state.target is not None and state.deployed is not None
        if release_of(state.target) != self.target:
            return self.cancel(state)
        deployed = release_of(state.deployed)
        if self.serving(deployed):
            if state.operation != ROLLBACK:
                return self.complete(state)
            return self.after_rollback_rollout(state)
        if self.elapsed(state) >= self.inputs.upgrade.progress_deadline_seconds:
            seconds = self.inputs.upgrade.progress_deadline_seconds
            detail = f"{deployed.version} did not become ready within {seconds}s: {self.not_serving(deployed)}"
            self.emit(ROLLOUT_FAILED, detail, warning=True)
            return self.fail(state, ROLLOUT_FAILED, detail)
        return None

    def after_rollback_rollout(self, state: State) -> State:
        """A rollback's pods serve (on the newer schema): now the schema goes down, if it must."""
        assert state.target is not None and state.running is not None
        revision = state.target.revision
        if self.inputs.upgrade.run_migrations and revision and revision != state.running.revision:
            return self.start_job(state, DOWNGRADING)
        return self.complete(state)

    def rolling_back(self, state: State) -> State | None:
        assert state.running is not None
        running = release_of(state.running)
        if self.serving(running):
            return self.after_restore(state, restored=True)
        if self.elapsed(state) >= self.inputs.upgrade.progress_deadline_seconds:
            seconds = self.inputs.upgrade.progress_deadline_seconds
            detail = (
                f"{self.failure_detail(state)}; rolling back, {running.version} did not become ready again within "
                f"{seconds}s: {self.not_serving(running)}. Nothing more is done: find out why {running.version} does "
                "not start (kubectl describe the pods), then set spec.version, or give the annotation "
                "aperag.io/retry-upgrade a new value to try again"
            )
            self.emit(ROLLBACK_FAILED, detail, warning=True)
            return self.stop(state, ROLLBACK_FAILED, ROLLBACK_FAILED, detail)
        return None

    def downgrading(self, state: State) -> State | None:
        assert state.target is not None and state.running is not None
        result = self.job_result(state)
        if result is None:
            return None
        if isinstance(result, JobObservation) and result.state == "Running":
            return state.model_copy(update={"seen": True}) if not state.seen else None
        if isinstance(result, JobObservation):
            state = self.learn(state, result.report)
        if isinstance(result, JobObservation) and result.state == "Succeeded":
            _, revision = self.downgrade_plan(state)
            self.emit("DowngradeSucceeded", f"Job {result.name} downgraded the schema to {revision}")
            if state.operation == ROLLBACK:
                return self.complete(state)
            return self.finish_rollback(state, undone=True)
        detail = result if isinstance(result, str) else self.job_failure(result, DOWNGRADING)
        return self.rollback_failed(state, detail)

    def rollback_failed(self, state: State, detail: str) -> State:
        assert state.running is not None and state.target is not None and state.deployed is not None
        image, revision = self.downgrade_plan(state)
        serving = state.deployed.version
        context = f"after {state.reason}: " if state.reason and state.operation != ROLLBACK else ""
        schema = state.database_revision or "unknown"
        message = (
            f"{context}{detail}. {serving} serves on the newer schema (revision {schema}), "
            "which the compatibility contract allows; nothing more is done. To finish by hand: run "
            f"`aperag migrate downgrade {revision}` with image {image.image} against the database (for example "
            "`kubectl logs` of the Job shows why it failed), then set spec.version to the version you want, or give "
            "the annotation aperag.io/retry-upgrade a new value to try again"
        )
        self.emit(ROLLBACK_FAILED, message, warning=True)
        return self.stop(state, ROLLBACK_FAILED, ROLLBACK_FAILED, message)

    # --- ends ----------------------------------------------------------------------------------------------

    def fail(self, state: State, reason: str, detail: str) -> State:
        """A failed step: back to the running release (when there is one and rollbackOnFailure)."""
        state = state.model_copy(update={"reason": reason, "message": detail})
        if state.running is None:
            return self.stop(state, FAILED, reason, f"{detail}; nothing to roll back to (first install)")
        if not self.inputs.upgrade.rollback_on_failure:
            note = "not rolled back (spec.upgrade.rollbackOnFailure is false)"
            return self.stop(state, FAILED, reason, f"{detail}; {note}")
        return self.restore(state)

    def cancel(self, state: State) -> State:
        """The spec changed while an operation was under way: return to the running release (exactly as a
        rollback would), then the next call plans the new target."""
        assert state.target is not None
        running = state.running.version if state.running else "nothing"
        self.emit(
            "UpgradeCancelled",
            f"spec now asks for {self.target.version}: the change to {state.target.version} is undone first "
            f"({running} runs meanwhile)",
        )
        state = state.model_copy(update={"reason": CANCELLED, "message": f"change to {state.target.version} cancelled"})
        if state.running is None or (state.operation == ROLLBACK and state.phase != ROLLING_OUT):
            return self.finish_rollback(state, undone=False)
        return self.restore(state)

    def restore(self, state: State) -> State:
        assert state.running is not None
        if state.deployed != ref_of(release_of(state.running)):
            return self.start_restore(state)
        return self.after_restore(state, restored=False)

    def after_restore(self, state: State, restored: bool) -> State:
        """The running release serves again: undo the schema change, if there was one."""
        assert state.running is not None
        if not state.schema_changed or state.operation == ROLLBACK:
            return self.finish_rollback(state, undone=restored)
        revision = state.running.revision
        if revision is None or revision == BASE:
            why = "unknown" if revision is None else "base (an empty schema): never dropped automatically"
            note = (
                f"{state.running.version} serves again, but the schema was not downgraded: the revision of "
                f"{state.running.version} is {why}"
            )
            return self.stop(state, FAILED, state.reason or MIGRATION_FAILED, f"{self.failure_detail(state)}; {note}")
        return self.start_job(state, DOWNGRADING)

    def finish_rollback(self, state: State, undone: bool) -> State:
        running = state.running
        if undone and running is not None:
            self.emit("RolledBack", f"{running.version} serves again (schema revision {running.revision or 'unknown'})")
        if state.reason == CANCELLED:
            self.record(state, CANCELLED, CANCELLED, state.message)
            return state.model_copy(
                update={
                    "phase": COMPLETE,
                    "target": running,
                    "deployed": state.deployed if running is None else ref_of(release_of(running)),
                    "job": None,
                    "seen": False,
                    "schema_changed": False,
                    "reason": None,
                    "message": state.message,
                    "finished_at": self.stamp,
                    "stopped_for": None,
                    "retry_token": None,
                }
            )
        assert running is not None
        detail = self.failure_detail(state)
        revision = running.revision or "unknown"
        if undone:
            message = f"{detail}; rolled back: {running.version} serves on schema revision {revision}"
        else:
            message = f"{detail}; nothing was changed: {running.version} keeps serving on schema revision {revision}"
        return self.stop(state, FAILED, state.reason or MIGRATION_FAILED, message)

    def failure_detail(self, state: State) -> str:
        """The first part of the message: what failed (without what was done about it since)."""
        return (state.message or "").split("; rolling back", 1)[0].split("; nothing", 1)[0].split("; rolled back", 1)[0]

    def stop(self, state: State, phase: str, reason: str, message: str) -> State:
        outcome = ROLLBACK_FAILED if phase == ROLLBACK_FAILED else FAILED
        state = state.model_copy(
            update={
                "phase": phase,
                "job": None,
                "seen": False,
                "reason": reason,
                "message": message,
                "finished_at": self.stamp,
                "stopped_for": ref_of(self.target),
                "retry_token": self.inputs.retry_token,
            }
        )
        self.record(state, outcome, reason, message)
        return state

    def complete(self, state: State) -> State:
        assert state.target is not None
        target = release_of(state.target)
        revision = state.target.revision
        if state.operation == ROLLBACK:
            if not self.inputs.upgrade.run_migrations:
                revision = None
            message = f"rolled back to {target.version} (schema revision {revision or 'unknown'})"
            self.emit("RollbackSucceeded", message)
        else:
            message = f"{target.version} is running (schema revision {revision or 'unknown'})"
            self.emit(f"{state.operation}Succeeded", message)
        state = state.model_copy(
            update={
                "phase": COMPLETE,
                "running": record_of(target, revision),
                "target": record_of(target, revision),
                "deployed": ref_of(target),
                "job": None,
                "seen": False,
                "schema_changed": False,
                "reason": None,
                "message": message,
                "finished_at": self.stamp,
                "stopped_for": None,
                "retry_token": None,
            }
        )
        self.record(state, SUCCEEDED, message=message)
        return state

    # --- the decision --------------------------------------------------------------------------------------

    def starts_something(self, before: State | None, after: State) -> bool:
        """Whether going from ``before`` to ``after`` starts something new (kept back while gates are closed)."""
        if before is None or before.phase not in ACTIVE:
            return after.phase in ACTIVE
        new_job = after.job is not None and after.job != before.job
        new_backup = after.phase == BACKING_UP and after.backup != before.backup
        return new_job or new_backup

    def run(self, state: State | None) -> State | None:
        for _ in range(MAX_TRANSITIONS):
            mark = len(self.events)
            history = list(self.history)
            nxt = self.step(state)
            held = nxt is not None and not self.inputs.gates_open and self.starts_something(state, nxt)
            if nxt is None or nxt == state or held:
                # Not taken: whatever the attempt recorded is dropped with it.
                del self.events[mark:]
                self.history[:] = history
                return state
            state = nxt
        raise RuntimeError(f"upgrade machine did not settle after {MAX_TRANSITIONS} transitions: {state}")

    def decision(self, state: State | None, frozen: bool = False) -> UpgradeDecision:
        history = [h.model_dump(by_alias=True, exclude_none=True) for h in self.history]
        if state is None:
            return UpgradeDecision(None, history, None, None, (), (), (), None, (), None)
        job = self.job_request(state) if not frozen else None
        backup = self.backup_request(state) if not frozen else None
        deployed = release_of(state.deployed) if state.deployed and not frozen else None
        active = state.phase in ACTIVE
        phase = self.kubectl_phase(state) if active and not frozen else None
        return UpgradeDecision(
            upgrade=state.model_dump(by_alias=True, exclude_none=True),
            history=history,
            version=state.running.version if state.running else None,
            deployments=deployed,
            jobs=(job,) if job else (),
            backups=(backup,) if backup else (),
            problems=self.problems(state),
            phase=phase,
            events=() if frozen else tuple(self.events),
            requeue_after=self.requeue_after(state) if active and not frozen else None,
        )

    def kubectl_phase(self, state: State) -> str:
        if (state.phase == ROLLING_OUT and state.operation == ROLLBACK) or state.phase == DOWNGRADING:
            return ROLLING_BACK
        return state.phase

    def problems(self, state: State) -> tuple[Problem, ...]:
        if state.phase in ACTIVE:
            if state.reason and state.reason != CANCELLED:
                return (Problem(state.reason, state.message, blocks_workloads=False),)
            return (Problem(self.kubectl_phase(state), state.message, blocks_workloads=False, degraded=False),)
        if state.phase in STOPPED:
            reason = UNKNOWN_VERSION if state.phase == REFUSED else state.reason or state.phase
            if state.phase == ROLLBACK_FAILED:
                reason = ROLLBACK_FAILED
            return (Problem(reason, state.message, blocks_workloads=False),)
        return ()

    def requeue_after(self, state: State) -> float:
        upgrade = self.inputs.upgrade
        limits = {
            BACKING_UP: upgrade.backup_timeout_seconds + START_GRACE_SECONDS,
            MIGRATING: upgrade.migration_timeout_seconds + START_GRACE_SECONDS,
            DOWNGRADING: upgrade.migration_timeout_seconds + START_GRACE_SECONDS,
            ROLLING_OUT: upgrade.progress_deadline_seconds,
            ROLLING_BACK: upgrade.progress_deadline_seconds,
        }
        remaining = limits[state.phase] - self.elapsed(state)
        return float(remaining) if remaining > 1 else float(RECHECK_SECONDS)


def decide(
    inputs: UpgradeInputs, previous: dict[str, Any] | None, observed: UpgradeObserved, now: datetime
) -> UpgradeDecision:
    """The next step of the upgrade of one ApeRAG.

    ``previous`` is the resource's status as read back (``upgrade`` and ``history`` are used);
    ``observed`` what exists now; ``now`` the time (no clock is read here).
    """
    previous = previous or {}
    try:
        history = [HistoryEntry.model_validate(h) for h in previous.get("history") or []]
        state = UpgradeStatus.model_validate(previous["upgrade"]) if previous.get("upgrade") else None
    except ValidationError as err:
        problem = Problem(
            "UpgradeStatusInvalid",
            f"status.upgrade or status.history cannot be read ({err.error_count()} errors): nothing is changed "
            "until it is fixed or removed",
            blocks_workloads=False,
        )
        return UpgradeDecision(previous.get("upgrade"), previous.get("history") or [], previous.get("version"),
                               None, (), (), (problem,), None, (), None)  # fmt: skip
    machine = _Machine(inputs, observed, now, history)
    if inputs.paused:
        return machine.decision(state, frozen=True)
    return machine.decision(machine.run(state))

