"""The upgrade state machine, one row per transition (written before the machine), and its properties:
idempotent on its own output, never asks again for a Job whose result it recorded, at most one Job at a
time, frozen while paused."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import pytest
from aperag_operator.builders.common import Release
from aperag_operator.upgrade import (
    BackupObservation,
    JobObservation,
    UpgradeDecision,
    UpgradeInputs,
    UpgradeObserved,
    decide,
)

from .upgrade_story import (
    NIGHTLY,
    NOTHING,
    NOW,
    V3,
    V4,
    V5,
    V6,
    Status,
    Story,
    finished_job,
    inputs,
    installed,
    job_of,
    later,
    observed,
    report,
    running_job,
    upgraded,
)

Setup = tuple[Status | None, UpgradeInputs, UpgradeObserved, datetime]
UPGRADE_FAILED_UNCHANGED = report(False, before="0001", current="0001", reason="MigrationFailed")
UPGRADE_FAILED_CHANGED = report(False, before="0001", current="0001b", reason="MigrationFailed")
DOWNGRADE_FAILED = report(False, before="0002", current="0002", reason="MigrationFailed", action="downgrade")
KEEP = object()  # "the Deployments run what they ran"


@dataclass(frozen=True)
class Row:
    id: str
    setup: Callable[[], Setup]
    phase: str | None  # status.upgrade.phase after the call (None: no status.upgrade)
    deployments: Release | object | None
    jobs: tuple[tuple[str, Release, str], ...] = ()  # (action, image's release, revision)
    backups: int = 0
    problems: tuple[tuple[str, bool], ...] = ()  # (reason, degraded)
    events: tuple[str, ...] = ()
    version: str | object | None = KEEP
    kubectl_phase: str | None = None
    requeue: bool = False
    extra: Callable[[UpgradeDecision], None] | None = field(default=None, compare=False)


def at(story: Story, inp: UpgradeInputs, obs: UpgradeObserved = NOTHING, now: datetime = NOW) -> Setup:
    return (story.status, inp, obs, now)


# --- previous states, reached by the machine's own transitions -------------------------------------------


def install_migrating() -> tuple[Story, UpgradeDecision]:
    story = Story()
    return story, story.step(inputs(V5))


def install_rolling_out() -> tuple[Story, UpgradeDecision]:
    story, migrating = install_migrating()
    done = finished_job(migrating, rep=report(current="0002"))
    story.step(inputs(V5), observed(jobs=[done]))
    return story, migrating


def upgrade_migrating(upgrade: dict[str, Any] | None = None, to: Release = V5) -> tuple[Story, UpgradeDecision]:
    story = installed(V4, upgrade)
    return story, story.step(inputs(to, upgrade), observed(V4))


def upgrade_rolling_out(upgrade: dict[str, Any] | None = None) -> tuple[Story, UpgradeDecision]:
    story, migrating = upgrade_migrating(upgrade)
    done = finished_job(migrating, rep=report(before="0001", current="0002"))
    story.step(inputs(V5, upgrade), observed(V4, jobs=[done]))
    return story, migrating


def upgrade_downgrading() -> tuple[Story, UpgradeDecision]:
    story, migrating = upgrade_migrating()
    failed = finished_job(migrating, ok=False, reason="DeadlineExceeded")  # no report: assume changed
    downgrading = story.step(inputs(V5), observed(V4, jobs=[failed]))
    return story, downgrading


def rollout_rolling_back() -> Story:
    story, _ = upgrade_rolling_out()
    story.step(inputs(V5), observed(V5, ready=False), later(601))
    return story


def manual_rollback_rolling_out() -> Story:
    story = upgraded(V4, V5)
    story.step(inputs(V4), observed(V5))
    return story


def manual_rollback_downgrading() -> tuple[Story, UpgradeDecision]:
    story = manual_rollback_rolling_out()
    return story, story.step(inputs(V4), observed(V4))


def failed_upgrade(token: str | None = None) -> Story:
    story, migrating = upgrade_migrating()
    failed = finished_job(migrating, ok=False, rep=UPGRADE_FAILED_UNCHANGED)
    story.step(inputs(V5, retry_token=token), observed(V4, jobs=[failed]))
    assert story.status is not None and story.status["upgrade"]["phase"] == "Failed"
    return story


def rollback_failed() -> Story:
    story, downgrading = upgrade_downgrading()
    failed = finished_job(downgrading, ok=False, rep=DOWNGRADE_FAILED)
    story.step(inputs(V5), observed(V4, jobs=[failed]))
    return story


def backing_up() -> tuple[Story, UpgradeDecision]:
    up = {"backupBeforeUpgrade": True}
    story = installed(V4, up)
    return story, story.step(inputs(V5, up), observed(V4))


def backup(decision: UpgradeDecision, phase: str) -> BackupObservation:
    (request,) = decision.backups
    return BackupObservation(request.name, phase, "disk full" if phase == "Failed" else "")


# --- the table -----------------------------------------------------------------------------------------------


def _setup_install_gates_closed() -> Setup:
    return (None, inputs(V5, gates_open=False, gates_reason="databases not ready"), NOTHING, NOW)


def _setup_install() -> Setup:
    return (None, inputs(V5), NOTHING, NOW)


def _setup_install_no_migrations() -> Setup:
    return (None, inputs(V5, {"runMigrations": False}), NOTHING, NOW)


def _setup_install_job_pending() -> Setup:
    story, _ = install_migrating()
    return at(story, inputs(V5), NOTHING, later(30))


def _setup_install_job_running() -> Setup:
    story, migrating = install_migrating()
    return at(story, inputs(V5), observed(jobs=[running_job(migrating)]), later(30))


def _setup_install_job_succeeded() -> Setup:
    story, migrating = install_migrating()
    return at(story, inputs(V5), observed(jobs=[finished_job(migrating, rep=report(current="0002"))]), later(30))


def _setup_install_job_succeeded_ready() -> Setup:
    story, migrating = install_migrating()
    done = finished_job(migrating, rep=report(current="0002"))
    return at(story, inputs(V5), observed(V5, jobs=[done]), later(30))


def _setup_install_rollout_ready() -> Setup:
    story, _ = install_rolling_out()
    return at(story, inputs(V5), observed(V5), later(60))


def _setup_install_rollout_waiting() -> Setup:
    story, _ = install_rolling_out()
    return at(story, inputs(V5), observed(V5, ready=False), later(60))


def _setup_install_rollout_deadline() -> Setup:
    story, _ = install_rolling_out()
    return at(story, inputs(V5), observed(V5, ready=False), later(700))


def _setup_install_migration_failed() -> Setup:
    story, migrating = install_migrating()
    failed = finished_job(migrating, ok=False, rep=report(False, current=None, reason="MigrationFailed", changed=False))
    return at(story, inputs(V5), observed(jobs=[failed]), later(30))


def _setup_install_multiple_heads() -> Setup:
    story, migrating = install_migrating()
    rep = replace(report(False, reason="MultipleHeads", message="2 heads (0002, 0002b)"), before=None, current=None)
    return at(story, inputs(V5), observed(jobs=[finished_job(migrating, ok=False, rep=rep)]), later(30))


def _setup_install_job_lost() -> Setup:
    story, migrating = install_migrating()
    story.step(inputs(V5), observed(jobs=[running_job(migrating)]), later(10))
    return at(story, inputs(V5), NOTHING, later(20))


def _setup_install_job_never_created() -> Setup:
    story, _ = install_migrating()
    return at(story, inputs(V5), NOTHING, later(600 + 3600))


def _setup_upgrade_start() -> Setup:
    return at(installed(V4), inputs(V5), observed(V4))


def _setup_upgrade_gates_closed() -> Setup:
    return at(installed(V4), inputs(V5, gates_open=False, gates_reason="Secret llm not found"), observed(V4))


def _setup_upgrade_backup_managed() -> Setup:
    up = {"backupBeforeUpgrade": True}
    return at(installed(V4, up), inputs(V5, up), observed(V4))


def _setup_upgrade_backup_external() -> Setup:
    up = {"backupBeforeUpgrade": True}
    return at(installed(V4, up), inputs(V5, up, postgres_cluster=None), observed(V4))


def _setup_backup_succeeded() -> Setup:
    story, decision = backing_up()
    return at(story, inputs(V5, {"backupBeforeUpgrade": True}), observed(V4, backups=[backup(decision, "Succeed")]))


def _setup_backup_failed() -> Setup:
    story, decision = backing_up()
    return at(story, inputs(V5, {"backupBeforeUpgrade": True}), observed(V4, backups=[backup(decision, "Failed")]))


def _setup_backup_running() -> Setup:
    story, decision = backing_up()
    return at(story, inputs(V5, {"backupBeforeUpgrade": True}), observed(V4, backups=[backup(decision, "Running")]))


def _setup_upgrade_migrated() -> Setup:
    story, migrating = upgrade_migrating()
    done = finished_job(migrating, rep=report(before="0001", current="0002"))
    return at(story, inputs(V5), observed(V4, jobs=[done]), later(30))


def _setup_upgrade_healthy() -> Setup:
    story, migrating = upgrade_rolling_out()
    done = finished_job(migrating, rep=report(before="0001", current="0002"))
    return at(story, inputs(V5), observed(V5, jobs=[done]), later(60))


def _setup_upgrade_failed_unchanged() -> Setup:
    story, migrating = upgrade_migrating()
    rep = report(False, before="0001", current="0001", reason="MigrationFailed", message="relation x does not exist")
    return at(story, inputs(V5), observed(V4, jobs=[finished_job(migrating, ok=False, rep=rep)]), later(30))


def _setup_upgrade_failed_changed() -> Setup:
    story, migrating = upgrade_migrating()
    rep = report(False, before="0001", current="0001b", reason="MigrationFailed")
    return at(story, inputs(V5), observed(V4, jobs=[finished_job(migrating, ok=False, rep=rep)]), later(30))


def _setup_upgrade_timed_out() -> Setup:
    story, migrating = upgrade_migrating()
    timed_out = finished_job(migrating, ok=False, reason="DeadlineExceeded")
    return at(story, inputs(V5), observed(V4, jobs=[timed_out]), later(601))


def _setup_downgrade_succeeded() -> Setup:
    story, downgrading = upgrade_downgrading()
    done = finished_job(downgrading, rep=report(before="0002", current="0001", action="downgrade"))
    return at(story, inputs(V5), observed(V4, jobs=[done]), later(700))


def _setup_downgrade_failed() -> Setup:
    story, downgrading = upgrade_downgrading()
    failed = finished_job(downgrading, ok=False, rep=DOWNGRADE_FAILED)
    return at(story, inputs(V5), observed(V4, jobs=[failed]), later(700))


def _setup_rollout_deadline() -> Setup:
    story, _ = upgrade_rolling_out()
    return at(story, inputs(V5), observed(V5, ready=False), later(601))


def _setup_rolled_back_serving() -> Setup:
    return at(rollout_rolling_back(), inputs(V5), observed(V4), later(650))


def _setup_rolled_back_no_migrations() -> Setup:
    up = {"runMigrations": False}
    story = installed(V4)
    story.step(inputs(V5, up), observed(V4))  # straight to RollingOut
    story.step(inputs(V5, up), observed(V5, ready=False), later(601))  # health gate failed
    return at(story, inputs(V5, up), observed(V4), later(650))


def _setup_rolling_back_deadline() -> Setup:
    return at(rollout_rolling_back(), inputs(V5), observed(V4, ready=False), later(601 + 601))


def _setup_no_rollback_migration() -> Setup:
    up = {"rollbackOnFailure": False}
    story, migrating = upgrade_migrating(up)
    rep = report(False, before="0001", current="0001b", reason="MigrationFailed")
    return at(story, inputs(V5, up), observed(V4, jobs=[finished_job(migrating, ok=False, rep=rep)]), later(30))


def _setup_no_rollback_rollout() -> Setup:
    up = {"rollbackOnFailure": False}
    story, _ = upgrade_rolling_out(up)
    return at(story, inputs(V5, up), observed(V5, ready=False), later(601))


def _setup_failed_same_spec() -> Setup:
    return at(failed_upgrade(), inputs(V5), observed(V4), later(900))


def _setup_failed_retry() -> Setup:
    return at(failed_upgrade(), inputs(V5, retry_token="try-2"), observed(V4), later(900))


def _setup_failed_spec_back() -> Setup:
    return at(failed_upgrade(), inputs(V4), observed(V4), later(900))


def _setup_rollback_failed_same_spec() -> Setup:
    return at(rollback_failed(), inputs(V5), observed(V4), later(900))


def _setup_upgrade_no_migrations() -> Setup:
    up = {"runMigrations": False}
    return at(installed(V4), inputs(V5, up), observed(V4))


def _setup_manual_rollback_start() -> Setup:
    return at(upgraded(V4, V5), inputs(V4), observed(V5))


def _setup_manual_rollback_serving() -> Setup:
    return at(manual_rollback_rolling_out(), inputs(V4), observed(V4), later(60))


def _setup_manual_rollback_done() -> Setup:
    story, downgrading = manual_rollback_downgrading()
    done = finished_job(downgrading, rep=report(before="0002", current="0001", action="downgrade"))
    return at(story, inputs(V4), observed(V4, jobs=[done]), later(90))


def _setup_manual_rollback_downgrade_failed() -> Setup:
    story, downgrading = manual_rollback_downgrading()
    failed = finished_job(downgrading, ok=False, rep=DOWNGRADE_FAILED)
    return at(story, inputs(V4), observed(V4, jobs=[failed]), later(90))


def _setup_manual_rollback_not_ready() -> Setup:
    return at(manual_rollback_rolling_out(), inputs(V4), observed(V4, ready=False), later(601))


def _setup_manual_rollback_restored() -> Setup:
    story = manual_rollback_rolling_out()
    story.step(inputs(V4), observed(V4, ready=False), later(601))
    return at(story, inputs(V4), observed(V5), later(620))


def _setup_unknown_older_version() -> Setup:
    return at(upgraded(V4, V5), inputs(V3), observed(V5))


def _setup_unparsable_version() -> Setup:
    return at(upgraded(V4, V5), inputs(NIGHTLY), observed(V5))


def _setup_probe_says_older() -> Setup:
    story = upgraded(V4, V5)
    migrating = story.step(inputs(NIGHTLY), observed(V5))
    rep = report(False, before="0002", current="0002", reason="UnknownRevision", message="the database is at 0002")
    return at(story, inputs(NIGHTLY), observed(V5, jobs=[finished_job(migrating, ok=False, rep=rep)]), later(30))


def _setup_rollback_same_schema() -> Setup:
    story = upgraded(V4, V5)
    # A record of 0.4.0 on 0002: e.g. a patch release that kept the schema.
    assert story.status is not None
    for entry in story.status["history"]:
        if entry["version"] == "0.4.0":
            entry["revision"] = "0002"
    return at(story, inputs(V4), observed(V5))


def _setup_rollback_with_backup() -> Setup:
    up = {"backupBeforeUpgrade": True}
    return at(upgraded(V4, V5, up), inputs(V4, up), observed(V5))


def _setup_adopt_same() -> Setup:
    return (None, inputs(V5), observed(V5), NOW)


def _setup_adopt_older() -> Setup:
    return (None, inputs(V5), observed(V4), NOW)


def _setup_spec_change_while_migrating() -> Setup:
    story, migrating = upgrade_migrating()
    return at(story, inputs(V6), observed(V4, jobs=[running_job(migrating)]), later(30))


def _setup_spec_change_after_migration() -> Setup:
    story, migrating = upgrade_migrating()
    done = finished_job(migrating, rep=report(before="0001", current="0002"))
    return at(story, inputs(V6), observed(V4, jobs=[done]), later(30))


def _setup_cancel_downgraded() -> Setup:
    story, migrating = upgrade_migrating()
    done = finished_job(migrating, rep=report(before="0001", current="0002"))
    downgrading = story.step(inputs(V6), observed(V4, jobs=[done]), later(30))
    down = finished_job(downgrading, rep=report(before="0002", current="0001", action="downgrade"))
    return at(story, inputs(V6), observed(V4, jobs=[done, down]), later(60))


def _setup_spec_back_after_migration() -> Setup:
    story, migrating = upgrade_migrating()
    done = finished_job(migrating, rep=report(before="0001", current="0002"))
    return at(story, inputs(V4), observed(V4, jobs=[done]), later(30))


def _setup_spec_change_while_rolling_out() -> Setup:
    story, _ = upgrade_rolling_out()
    return at(story, inputs(V6), observed(V5, ready=False), later(60))


def _setup_spec_change_while_backing_up() -> Setup:
    story, decision = backing_up()
    return at(story, inputs(V6, {"backupBeforeUpgrade": True}), observed(V4, backups=[backup(decision, "Running")]))


def _setup_backup_done_after_spec_change() -> Setup:
    up = {"backupBeforeUpgrade": True}
    story, decision = backing_up()
    story.step(inputs(V6, up), observed(V4, backups=[backup(decision, "Running")]))
    return at(story, inputs(V6, up), observed(V4, backups=[backup(decision, "Succeed")]), later(60))


def _setup_paused_upgrade() -> Setup:
    return at(installed(V4), inputs(V5, paused=True), observed(V4))


def _setup_paused_migrating() -> Setup:
    story, migrating = upgrade_migrating()
    done = finished_job(migrating, rep=report(before="0001", current="0002"))
    return at(story, inputs(V5, paused=True), observed(V4, jobs=[done]), later(30))


def _setup_gates_close_before_downgrade() -> Setup:
    return at(rollout_rolling_back(), inputs(V5, gates_open=False), observed(V4), later(650))


def _setup_complete_resync() -> Setup:
    return at(upgraded(V4, V5), inputs(V5), observed(V5), later(3600))


def _no_job_and_message(text: str) -> Callable[[UpgradeDecision], None]:
    def check(decision: UpgradeDecision) -> None:
        assert decision.upgrade is not None
        assert text in decision.upgrade["message"], decision.upgrade["message"]

    return check


def _running(version: str, revision: str | None) -> Callable[[UpgradeDecision], None]:
    def check(decision: UpgradeDecision) -> None:
        assert decision.upgrade is not None
        running = decision.upgrade["running"]
        assert (running["version"], running.get("revision")) == (version, revision), running

    return check


def _history(*outcomes: tuple[str, str]) -> Callable[[UpgradeDecision], None]:
    def check(decision: UpgradeDecision) -> None:
        got = [(e["version"], e["outcome"]) for e in decision.history]
        assert got == list(outcomes), got

    return check


def _backup_message(*texts: str) -> Callable[[UpgradeDecision], None]:
    def check(decision: UpgradeDecision) -> None:
        assert decision.upgrade is not None
        for text in texts:
            assert text in decision.upgrade["backupMessage"], decision.upgrade

    return check


def _message_problem(reason: str, *texts: str) -> Callable[[UpgradeDecision], None]:
    def check(decision: UpgradeDecision) -> None:
        problem = next(p for p in decision.problems if p.reason == reason)
        for text in texts:
            assert text in problem.message, problem.message

    return check


ROWS = [
    # first install
    Row("install: gates closed -> nothing starts", _setup_install_gates_closed, None, None, version=None),
    Row(
        "install: migration Job before any Deployment",
        _setup_install,
        "Migrating",
        None,
        jobs=(("upgrade", V5, "head"),),
        problems=(("Migrating", False),),
        events=("InstallStarted", "MigrationStarted"),
        version=None,
        kubectl_phase="Migrating",
        requeue=True,
    ),
    Row(
        "install: runMigrations false -> roll out at once, said in the status",
        _setup_install_no_migrations,
        "RollingOut",
        V5,
        problems=(("RollingOut", False),),
        events=("InstallStarted", "MigrationSkipped", "RollingOut"),
        kubectl_phase="RollingOut",
        requeue=True,
        extra=_no_job_and_message("runMigrations"),
    ),
    Row("install: Job not created yet -> still wanted", _setup_install_job_pending, "Migrating", None,
        jobs=(("upgrade", V5, "head"),), problems=(("Migrating", False),), kubectl_phase="Migrating", requeue=True),
    Row("install: Job running -> wait", _setup_install_job_running, "Migrating", None,
        jobs=(("upgrade", V5, "head"),), problems=(("Migrating", False),), kubectl_phase="Migrating", requeue=True),
    Row(
        "install: migrated -> Deployments created at the target",
        _setup_install_job_succeeded,
        "RollingOut",
        V5,
        problems=(("RollingOut", False),),
        events=("MigrationSucceeded", "RollingOut"),
        kubectl_phase="RollingOut",
        requeue=True,
    ),
    Row(
        "install: migrated and already healthy -> complete in one call",
        _setup_install_job_succeeded_ready,
        "Complete",
        V5,
        events=("MigrationSucceeded", "RollingOut", "InstallSucceeded"),
        version="0.5.0",
        extra=_running("0.5.0", "0002"),
    ),
    Row("install: healthy -> complete", _setup_install_rollout_ready, "Complete", V5,
        events=("InstallSucceeded",), version="0.5.0", extra=_history(("0.5.0", "Succeeded"))),
    Row("install: rolling out -> wait for the health gate", _setup_install_rollout_waiting, "RollingOut", V5,
        problems=(("RollingOut", False),), kubectl_phase="RollingOut", requeue=True),
    Row(
        "install: health gate deadline -> RolloutFailed, nothing to roll back to",
        _setup_install_rollout_deadline,
        "Failed",
        V5,
        problems=(("RolloutFailed", True),),
        events=("RolloutFailed",),
        version=None,
        extra=_message_problem("RolloutFailed", "first install"),
    ),
    Row(
        "install: migration failed -> no Deployment, MigrationFailed",
        _setup_install_migration_failed,
        "Failed",
        None,
        problems=(("MigrationFailed", True),),
        events=("MigrationFailed",),
        version=None,
    ),
    Row(
        "install: MultipleHeads -> refused with the heads named",
        _setup_install_multiple_heads,
        "Failed",
        None,
        problems=(("MultipleHeads", True),),
        events=("MigrationFailed",),
        version=None,
        extra=_message_problem("MultipleHeads", "0002b"),
    ),
    Row("install: Job disappeared before its result -> failed", _setup_install_job_lost, "Failed", None,
        problems=(("MigrationFailed", True),), events=("MigrationFailed",), version=None,
        extra=_message_problem("MigrationFailed", "disappeared")),
    Row("install: Job never appeared -> failed", _setup_install_job_never_created, "Failed", None,
        problems=(("MigrationFailed", True),), events=("MigrationFailed",), version=None),
    # upgrades
    Row(
        "upgrade: migration Job with the new image, old pods untouched",
        _setup_upgrade_start,
        "Migrating",
        V4,
        jobs=(("upgrade", V5, "head"),),
        problems=(("Migrating", False),),
        events=("UpgradeStarted", "MigrationStarted"),
        version="0.4.0",
        kubectl_phase="Migrating",
        requeue=True,
    ),
    Row("upgrade: gates closed -> not started", _setup_upgrade_gates_closed, "Complete", V4, version="0.4.0"),
    Row(
        "upgrade: backup first (managed PostgreSQL)",
        _setup_upgrade_backup_managed,
        "BackingUp",
        V4,
        backups=1,
        problems=(("BackingUp", False),),
        events=("UpgradeStarted", "BackupStarted"),
        kubectl_phase="BackingUp",
        requeue=True,
    ),
    Row(
        "upgrade: backup asked for, external PostgreSQL -> none taken, said so",
        _setup_upgrade_backup_external,
        "Migrating",
        V4,
        jobs=(("upgrade", V5, "head"),),
        problems=(("Migrating", False),),
        events=("UpgradeStarted", "BackupSkipped", "MigrationStarted"),
        kubectl_phase="Migrating",
        requeue=True,
        extra=_backup_message("no backup taken", "external"),
    ),
    Row("upgrade: backup succeeded -> migrate", _setup_backup_succeeded, "Migrating", V4,
        jobs=(("upgrade", V5, "head"),), problems=(("Migrating", False),),
        events=("BackupSucceeded", "MigrationStarted"), kubectl_phase="Migrating", requeue=True),
    Row("upgrade: backup failed -> stop before anything changed", _setup_backup_failed, "Failed", V4,
        problems=(("BackupFailed", True),), events=("BackupFailed",), version="0.4.0",
        extra=_message_problem("BackupFailed", "disk full")),
    Row("upgrade: backup running -> wait", _setup_backup_running, "BackingUp", V4, backups=1,
        problems=(("BackingUp", False),), kubectl_phase="BackingUp", requeue=True),
    Row("upgrade: migrated -> roll the Deployments", _setup_upgrade_migrated, "RollingOut", V5,
        problems=(("RollingOut", False),), events=("MigrationSucceeded", "RollingOut"), version="0.4.0",
        kubectl_phase="RollingOut", requeue=True),
    Row(
        "upgrade: healthy -> complete, history",
        _setup_upgrade_healthy,
        "Complete",
        V5,
        events=("UpgradeSucceeded",),
        version="0.5.0",
        extra=_history(("0.4.0", "Succeeded"), ("0.5.0", "Succeeded")),
    ),
    Row(
        "upgrade: migration failed, schema unchanged -> no downgrade needed",
        _setup_upgrade_failed_unchanged,
        "Failed",
        V4,
        problems=(("MigrationFailed", True),),
        events=("MigrationFailed",),
        version="0.4.0",
        extra=_message_problem("MigrationFailed", "relation x does not exist", "0.4.0 keeps serving"),
    ),
    Row(
        "upgrade: migration failed, schema changed -> downgrade with the new image",
        _setup_upgrade_failed_changed,
        "Downgrading",
        V4,
        jobs=(("downgrade", V5, "0001"),),
        problems=(("MigrationFailed", True),),
        events=("MigrationFailed", "DowngradeStarted"),
        version="0.4.0",
        kubectl_phase="RollingBack",
        requeue=True,
    ),
    Row("upgrade: migration timed out -> downgrade", _setup_upgrade_timed_out, "Downgrading", V4,
        jobs=(("downgrade", V5, "0001"),), problems=(("MigrationFailed", True),),
        events=("MigrationFailed", "DowngradeStarted"), kubectl_phase="RollingBack", requeue=True,
        extra=_message_problem("MigrationFailed", "timed out")),
    Row(
        "upgrade: downgraded -> rolled back, MigrationFailed says so",
        _setup_downgrade_succeeded,
        "Failed",
        V4,
        problems=(("MigrationFailed", True),),
        events=("DowngradeSucceeded", "RolledBack"),
        version="0.4.0",
        extra=_message_problem("MigrationFailed", "rolled back", "0001"),
    ),
    Row(
        "upgrade: downgrade failed -> RollbackFailed, keep what serves, say what to do",
        _setup_downgrade_failed,
        "RollbackFailed",
        V4,
        problems=(("RollbackFailed", True),),
        events=("RollbackFailed",),
        version="0.4.0",
        extra=_message_problem("RollbackFailed", "aperag migrate downgrade 0001", V5.image, "aperag.io/retry-upgrade"),
    ),
    Row("upgrade: health gate deadline -> Deployments back first", _setup_rollout_deadline, "RollingBack", V4,
        problems=(("RolloutFailed", True),), events=("RolloutFailed", "RollingBack"), version="0.4.0",
        kubectl_phase="RollingBack", requeue=True),
    Row("upgrade: old pods serve again -> downgrade", _setup_rolled_back_serving, "Downgrading", V4,
        jobs=(("downgrade", V5, "0001"),), problems=(("RolloutFailed", True),), events=("DowngradeStarted",),
        kubectl_phase="RollingBack", requeue=True),
    Row("upgrade: old pods serve, nothing migrated -> rolled back", _setup_rolled_back_no_migrations, "Failed", V4,
        problems=(("RolloutFailed", True),), events=("RolledBack",), version="0.4.0"),
    Row("upgrade: old pods do not come back either -> RollbackFailed", _setup_rolling_back_deadline,
        "RollbackFailed", V4, problems=(("RollbackFailed", True),), events=("RollbackFailed",)),
    Row("upgrade: rollbackOnFailure false, migration failed -> stop as is", _setup_no_rollback_migration, "Failed",
        V4, problems=(("MigrationFailed", True),), events=("MigrationFailed",),
        extra=_message_problem("MigrationFailed", "rollbackOnFailure")),
    Row("upgrade: rollbackOnFailure false, rollout failed -> stop as is", _setup_no_rollback_rollout, "Failed", V5,
        problems=(("RolloutFailed", True),), events=("RolloutFailed",), version="0.4.0"),
    Row("upgrade: failed target, same spec -> not retried", _setup_failed_same_spec, "Failed", V4,
        problems=(("MigrationFailed", True),), version="0.4.0"),
    Row("upgrade: retry annotation changed -> a new attempt", _setup_failed_retry, "Migrating", V4,
        jobs=(("upgrade", V5, "head"),), problems=(("Migrating", False),),
        events=("UpgradeStarted", "MigrationStarted"), kubectl_phase="Migrating", requeue=True),
    Row("upgrade: spec set back to the running version -> settled", _setup_failed_spec_back, "Complete", V4,
        version="0.4.0"),
    Row("upgrade: RollbackFailed, same spec -> never loops", _setup_rollback_failed_same_spec, "RollbackFailed",
        V4, problems=(("RollbackFailed", True),)),
    Row("upgrade: runMigrations false -> roll out at once", _setup_upgrade_no_migrations, "RollingOut", V5,
        problems=(("RollingOut", False),), events=("UpgradeStarted", "MigrationSkipped", "RollingOut"),
        kubectl_phase="RollingOut", requeue=True),
    # manual rollback
    Row("rollback: Deployments back first (old code serves the newer schema)", _setup_manual_rollback_start,
        "RollingOut", V4, problems=(("RollingBack", False),), events=("RollbackStarted", "RollingBack"),
        version="0.5.0", kubectl_phase="RollingBack", requeue=True),
    Row("rollback: old pods serve -> downgrade with the running image", _setup_manual_rollback_serving,
        "Downgrading", V4, jobs=(("downgrade", V5, "0001"),), problems=(("RollingBack", False),),
        events=("DowngradeStarted",), version="0.5.0", kubectl_phase="RollingBack", requeue=True),
    Row("rollback: downgraded -> the old version runs", _setup_manual_rollback_done, "Complete", V4,
        events=("DowngradeSucceeded", "RollbackSucceeded"), version="0.4.0", extra=_running("0.4.0", "0001")),
    Row("rollback: downgrade failed -> RollbackFailed", _setup_manual_rollback_downgrade_failed, "RollbackFailed",
        V4, problems=(("RollbackFailed", True),), events=("RollbackFailed",), version="0.5.0"),
    Row("rollback: old pods never ready -> the running version comes back", _setup_manual_rollback_not_ready,
        "RollingBack", V5, problems=(("RolloutFailed", True),), events=("RolloutFailed", "RollingBack"),
        version="0.5.0", kubectl_phase="RollingBack", requeue=True),
    Row("rollback: running version restored, schema untouched", _setup_manual_rollback_restored, "Failed", V5,
        problems=(("RolloutFailed", True),), events=("RolledBack",), version="0.5.0"),
    Row("rollback: unknown older version -> refused, nothing changes", _setup_unknown_older_version, "Refused",
        V5, problems=(("UnknownVersion", True),), events=("UpgradeRefused",), version="0.5.0",
        extra=_message_problem("UnknownVersion", "0.3.0", "status.history")),
    Row("rollback: a version that cannot be ordered -> its own upgrade Job decides", _setup_unparsable_version,
        "Migrating", V5, jobs=(("upgrade", NIGHTLY, "head"),), problems=(("Migrating", False),),
        events=("UpgradeStarted", "MigrationStarted"), kubectl_phase="Migrating", requeue=True),
    Row("rollback: its Job says the database is newer -> refused", _setup_probe_says_older, "Refused", V5,
        problems=(("UnknownVersion", True),), events=("UpgradeRefused",), version="0.5.0"),
    Row("rollback: same schema revision -> Deployments only", _setup_rollback_same_schema, "RollingOut", V4,
        problems=(("RollingBack", False),), events=("RollbackStarted", "RollingBack"), kubectl_phase="RollingBack",
        requeue=True),
    Row("rollback: backup before the downgrade", _setup_rollback_with_backup, "BackingUp", V5, backups=1,
        problems=(("BackingUp", False),), events=("RollbackStarted", "BackupStarted"), kubectl_phase="BackingUp",
        requeue=True),
    # adopting Deployments that ran before the operator migrated anything
    Row("adopt: running the target already -> migrate, keep the pods", _setup_adopt_same, "Migrating", V5,
        jobs=(("upgrade", V5, "head"),), problems=(("Migrating", False),),
        events=("UpgradeStarted", "MigrationStarted"), version="0.5.0", kubectl_phase="Migrating", requeue=True),
    Row("adopt: running an older release -> upgrade from it", _setup_adopt_older, "Migrating", V4,
        jobs=(("upgrade", V5, "head"),), problems=(("Migrating", False),),
        events=("UpgradeStarted", "MigrationStarted"), version="0.4.0", kubectl_phase="Migrating", requeue=True),
    # spec changes while an operation is under way
    Row("spec change: a running Job is never interrupted", _setup_spec_change_while_migrating, "Migrating", V4,
        jobs=(("upgrade", V5, "head"),), problems=(("Migrating", False),), kubectl_phase="Migrating", requeue=True),
    Row("spec change: the finished migration is undone first", _setup_spec_change_after_migration, "Downgrading",
        V4, jobs=(("downgrade", V5, "0001"),), problems=(("RollingBack", False),),
        events=("UpgradeCancelled", "DowngradeStarted"), kubectl_phase="RollingBack", requeue=True),
    Row("spec change: undone -> the new target starts", _setup_cancel_downgraded, "Migrating", V4,
        jobs=(("upgrade", V6, "head"),), problems=(("Migrating", False),),
        events=("DowngradeSucceeded", "RolledBack", "UpgradeStarted", "MigrationStarted"), kubectl_phase="Migrating",
        requeue=True, extra=_history(("0.4.0", "Succeeded"), ("0.5.0", "Cancelled"))),
    Row("spec back to the running version after the migration -> undone", _setup_spec_back_after_migration,
        "Downgrading", V4, jobs=(("downgrade", V5, "0001"),), problems=(("RollingBack", False),),
        events=("UpgradeCancelled", "DowngradeStarted"), kubectl_phase="RollingBack", requeue=True),
    Row("spec change while rolling out -> back to the running version first",
        _setup_spec_change_while_rolling_out, "RollingBack", V4, problems=(("RollingBack", False),),
        events=("UpgradeCancelled", "RollingBack"), kubectl_phase="RollingBack", requeue=True),
    Row("spec change while backing up -> the backup finishes", _setup_spec_change_while_backing_up, "BackingUp", V4,
        backups=1, problems=(("BackingUp", False),), kubectl_phase="BackingUp", requeue=True),
    Row("spec change: backup done -> the new target starts", _setup_backup_done_after_spec_change, "BackingUp", V4,
        backups=1, problems=(("BackingUp", False),),
        events=("BackupSucceeded", "UpgradeCancelled", "UpgradeStarted", "BackupStarted"),
        kubectl_phase="BackingUp", requeue=True, extra=_history(("0.4.0", "Succeeded"), ("0.5.0", "Cancelled"))),
    # paused and gates
    Row("paused: no Job, nothing rolled", _setup_paused_upgrade, "Complete", None, version="0.4.0"),
    Row("paused: results wait for the resume", _setup_paused_migrating, "Migrating", None,
        problems=(("Migrating", False),)),
    Row("gates closed: no downgrade Job starts", _setup_gates_close_before_downgrade, "RollingBack", V4,
        problems=(("RolloutFailed", True),), kubectl_phase="RollingBack", requeue=True),
    Row("steady state: nothing to do", _setup_complete_resync, "Complete", V5, version="0.5.0"),
]


def _check(row: Row, decision: UpgradeDecision, previous: Status | None) -> None:
    phase = decision.upgrade["phase"] if decision.upgrade else None
    assert phase == row.phase, decision.upgrade
    if row.deployments is not KEEP:
        assert decision.deployments == row.deployments
    got_jobs = tuple((j.action, j.release, j.revision) for j in decision.jobs)
    assert got_jobs == row.jobs
    assert len(decision.backups) == row.backups
    assert tuple((p.reason, p.degraded) for p in decision.problems) == row.problems, decision.problems
    assert all(not p.blocks_workloads for p in decision.problems)
    assert tuple(e.reason for e in decision.events) == row.events, decision.events
    if row.version is not KEEP:
        assert decision.version == row.version
    assert decision.phase == row.kubectl_phase
    assert (decision.requeue_after is not None) == row.requeue, decision.requeue_after
    if decision.requeue_after is not None:
        assert decision.requeue_after > 0
    if row.extra is not None:
        row.extra(decision)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_transition(row: Row) -> None:
    previous, inp, obs, now = row.setup()
    decision = decide(inp, previous, obs, now)
    _check(row, decision, previous)


# --- properties, over every row --------------------------------------------------------------------------


def _status(previous: Status | None, decision: UpgradeDecision) -> Status:
    out = dict(previous or {})
    out.update(decision.status_fields())
    return out


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_idempotent_on_its_own_output(row: Row) -> None:
    """A restarted operator that reads back what it wrote, and sees the same world, changes nothing."""
    previous, inp, obs, now = row.setup()
    first = decide(inp, previous, obs, now)
    second = decide(inp, _status(previous, first), obs, now)
    assert second.upgrade == first.upgrade
    assert second.history == first.history
    assert second.version == first.version
    assert second.deployments == first.deployments
    assert second.jobs == first.jobs and second.backups == first.backups
    assert second.problems == first.problems and second.phase == first.phase
    assert second.events == ()


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_finished_jobs_are_never_asked_for_again(row: Row) -> None:
    previous, inp, obs, now = row.setup()
    decision = decide(inp, previous, obs, now)
    finished = {name for name, job in obs.jobs.items() if job.state != "Running"}
    assert not finished & {j.name for j in decision.jobs}
    assert len(decision.jobs) <= 1 and len(decision.jobs) + len(decision.backups) <= 1


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_paused_freezes_everything(row: Row) -> None:
    previous, inp, obs, now = row.setup()
    decision = decide(replace(inp, paused=True), previous, obs, now)
    assert decision.jobs == () and decision.backups == () and decision.deployments is None
    assert decision.events == ()
    if previous is not None and previous.get("upgrade"):
        assert decision.upgrade == previous["upgrade"]
        assert decision.history == previous.get("history", [])


# --- whole stories: a restart at every step resumes; one Job per target --------------------------------------


def test_restart_at_every_step_of_an_upgrade_creates_each_job_once() -> None:
    """Each step is decided twice from the status alone (a restart), and the Jobs asked for are counted."""
    story = installed(V4)
    asked: list[str] = []
    inp = inputs(V5)

    def twice(obs: UpgradeObserved, now: datetime) -> UpgradeDecision:
        first = story.step(inp, obs, now)
        again = decide(inp, story.status, obs, now)  # the restarted operator
        assert again.jobs == first.jobs and again.upgrade == first.upgrade
        asked.extend(j.name for j in first.jobs)
        return first

    migrating = twice(observed(V4), NOW)
    twice(observed(V4, jobs=[running_job(migrating)]), later(5))
    done = finished_job(migrating, rep=report(before="0001", current="0002"))
    twice(observed(V4, jobs=[done]), later(10))
    twice(observed(V5, ready=False, jobs=[done]), later(20))
    final = twice(observed(V5, jobs=[done]), later(30))
    assert final.upgrade is not None and final.upgrade["phase"] == "Complete"
    assert set(asked) == {job_of(migrating)}


def test_retry_gets_a_new_job_name() -> None:
    story = failed_upgrade()
    first_attempt = [e for e in (story.status or {}).get("history", []) if e["version"] == "0.5.0"]
    assert first_attempt and first_attempt[-1]["outcome"] == "Failed"
    retried = story.step(inputs(V5, retry_token="2"), observed(V4), later(100))
    _, migrating = upgrade_migrating()
    assert job_of(retried) != job_of(migrating)


def test_history_is_trimmed_to_the_limit() -> None:
    up = {"historyLimit": 2}
    story = installed(V3, up)
    previous = V3
    for release in (V4, V5, V6):
        migrating = story.step(inputs(release, up), observed(previous))
        done = finished_job(migrating, rep=report(current="x" + release.version))
        story.step(inputs(release, up), observed(previous, jobs=[done]))
        story.step(inputs(release, up), observed(release, jobs=[done]))
        previous = release
    assert [e["version"] for e in (story.status or {})["history"]] == ["0.5.0", "0.6.0"]


def test_the_running_revision_is_learned_from_the_first_report() -> None:
    story = Story()
    migrating = story.step(inputs(V5), observed(V4))  # adopting 0.4.0, revision unknown
    assert story.status is not None and "revision" not in story.status["upgrade"]["running"]
    failed = finished_job(migrating, ok=False, rep=UPGRADE_FAILED_CHANGED)
    downgrading = story.step(inputs(V5), observed(V4, jobs=[failed]), later(30))
    assert [(j.action, j.revision) for j in downgrading.jobs] == [("downgrade", "0001")]


def test_never_downgrades_to_an_empty_schema_by_itself() -> None:
    """An adopted install whose database was never migrated: a failed upgrade is not "rolled back" by
    dropping every table."""
    story = Story()
    migrating = story.step(inputs(V5), observed(V4))
    failed = finished_job(migrating, ok=False, rep=report(False, before=None, current="0001", reason="MigrationFailed"))
    decision = story.step(inputs(V5), observed(V4, jobs=[failed]), later(30))
    assert decision.jobs == ()
    assert decision.upgrade is not None and decision.upgrade["phase"] == "Failed"
    assert any("base" in p.message for p in decision.problems)


def test_deployments_of_a_component_at_another_image_are_not_at_the_release() -> None:
    story, _ = upgrade_rolling_out()
    obs = observed(V5)
    stale = replace(obs.deployments["worker"], image=V4.image)
    obs = replace(obs, deployments={**obs.deployments, "worker": stale})
    decision = decide(inputs(V5), story.status, obs, later(30))
    assert decision.upgrade is not None and decision.upgrade["phase"] == "RollingOut"


def test_a_missing_deployment_is_not_healthy() -> None:
    story, _ = upgrade_rolling_out()
    obs = observed(V5)
    obs = replace(obs, deployments={k: v for k, v in obs.deployments.items() if k != "beat"})
    decision = decide(inputs(V5), story.status, obs, later(30))
    assert decision.upgrade is not None and decision.upgrade["phase"] == "RollingOut"


def test_two_resources_do_not_share_jobs() -> None:
    a = decide(inputs(V5), None, NOTHING, NOW)
    b = decide(replace(inputs(V5), name="other"), None, NOTHING, NOW)
    assert job_of(a) != job_of(b)
    assert job_of(b).startswith("other-migrate-")


def test_a_job_of_someone_else_is_ignored() -> None:
    story, migrating = upgrade_migrating()
    stranger = JobObservation("demo-migrate-deadbeef", "Failed")
    decision = decide(inputs(V5), story.status, observed(V4, jobs=[stranger]), later(5))
    assert decision.upgrade is not None and decision.upgrade["phase"] == "Migrating"
    assert job_of(decision) == job_of(migrating)


def test_a_record_on_an_empty_schema_is_not_a_rollback_target() -> None:
    story = upgraded(V4, V5)
    assert story.status is not None
    for entry in story.status["history"]:
        if entry["version"] == "0.4.0":
            entry["revision"] = "base"
    decision = decide(inputs(V4), story.status, observed(V5), NOW)
    assert decision.upgrade is not None and decision.upgrade["phase"] == "Refused"
    assert decision.jobs == () and decision.deployments == V5
