"""Helpers for the upgrade machine's tests: inputs, observations, and previous states reached by playing
the machine's own transitions (so the tests never hand-write its internal status)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from aperag_operator.builders.common import Release
from aperag_operator.spec.model import ImageSpec, parse_spec
from aperag_operator.status import ComponentState
from aperag_operator.upgrade import (
    BackupObservation,
    DeploymentObservation,
    JobObservation,
    MigrationReport,
    UpgradeDecision,
    UpgradeInputs,
    UpgradeObserved,
    decide,
)

REPO = ImageSpec().repository  # the CRD's default repository
V3 = Release("0.3.0", f"{REPO}:0.3.0")
V4 = Release("0.4.0", f"{REPO}:0.4.0")
V5 = Release("0.5.0", f"{REPO}:0.5.0")
V6 = Release("0.6.0", f"{REPO}:0.6.0")
NIGHTLY = Release("nightly", f"{REPO}:nightly")
REVISIONS = {V3: "0000", V4: "0001", V5: "0002", V6: "0003", NIGHTLY: "0009"}
COMPONENTS = ("api", "worker", "beat")
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
NOTHING = UpgradeObserved()

Status = dict[str, Any]


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def inputs(release: Release = V5, upgrade: dict[str, Any] | None = None, **kw: Any) -> UpgradeInputs:
    spec = parse_spec({"version": release.version, "upgrade": upgrade or {}})
    kw.setdefault("postgres_cluster", "demo-pg")
    return UpgradeInputs(name="demo", namespace="team-a", spec=spec, **kw)


def deployments(release: Release, *, ready: bool = True, components: tuple[str, ...] = COMPONENTS) -> dict[str, Any]:
    """Every component's Deployment at ``release``."""
    out = {}
    for component in components:
        desired = 1 if component == "beat" else 2
        state = ComponentState(desired, desired if ready else 0, desired, desired if ready else 0, ready)
        out[component] = DeploymentObservation(release.version, release.image, state)
    return out


def observed(
    release: Release | None = None,
    *,
    ready: bool = True,
    jobs: list[JobObservation] | None = None,
    backups: list[BackupObservation] | None = None,
) -> UpgradeObserved:
    return UpgradeObserved(
        jobs={j.name: j for j in jobs or []},
        backups={b.name: b for b in backups or []},
        deployments=deployments(release, ready=ready) if release else {},
    )


def report(
    ok: bool = True,
    *,
    before: str | None = None,
    current: str | None = None,
    changed: bool | None = None,
    reason: str | None = None,
    message: str = "",
    action: str = "upgrade",
) -> MigrationReport:
    before_t = (before,) if before else ()
    current_t = (current,) if current else ()
    if changed is None:
        changed = before_t != current_t
    return MigrationReport(ok, action, reason, message, before_t, current_t, changed)


def job_of(decision: UpgradeDecision) -> str:
    (job,) = decision.jobs
    return job.name


def finished_job(
    decision: UpgradeDecision, ok: bool = True, rep: MigrationReport | None = None, reason: str = ""
) -> JobObservation:
    """The decision's Job, finished."""
    return JobObservation(
        job_of(decision),
        "Succeeded" if ok else "Failed",
        reason=reason or ("" if ok else "PodFailurePolicy"),
        report=rep,
    )


def running_job(decision: UpgradeDecision) -> JobObservation:
    return JobObservation(job_of(decision), "Running")


def status_of(previous: Status | None, decision: UpgradeDecision) -> Status:
    """The status after writing the decision."""
    out = dict(previous or {})
    out.update(decision.status_fields())
    return out


@dataclass
class Story:
    """Plays the machine step by step, keeping the status between calls like the operator does."""

    status: Status | None = None
    last: UpgradeDecision | None = None

    def step(self, inp: UpgradeInputs, obs: UpgradeObserved = NOTHING, now: datetime = NOW) -> UpgradeDecision:
        self.last = decide(inp, self.status, obs, now)
        self.status = status_of(self.status, self.last)
        return self.last

    def copy(self) -> Story:
        return replace(self, status=dict(self.status or {}))


def installed(release: Release = V4, upgrade: dict[str, Any] | None = None) -> Story:
    """A story in which ``release`` was installed (migrated to its revision, rolled out, healthy)."""
    story = Story()
    inp = inputs(release, upgrade)
    migrating = story.step(inp)
    rev = REVISIONS[release]
    done = finished_job(migrating, rep=report(before=None, current=rev))
    story.step(inp, observed(jobs=[done]))
    story.step(inp, observed(release, jobs=[done]))
    assert story.status is not None and story.status["upgrade"]["phase"] == "Complete", story.status
    return story


def upgraded(frm: Release = V4, to: Release = V5, upgrade: dict[str, Any] | None = None) -> Story:
    """``frm`` installed, then upgraded to ``to`` successfully."""
    story = installed(frm, upgrade)
    inp = inputs(to, upgrade)
    migrating = story.step(inp, observed(frm))
    if migrating.backups:  # backupBeforeUpgrade: the backup succeeds first
        (request,) = migrating.backups
        migrating = story.step(inp, observed(frm, backups=[BackupObservation(request.name, "Succeed")]))
    done = finished_job(migrating, rep=report(before=REVISIONS[frm], current=REVISIONS[to]))
    story.step(inp, observed(frm, jobs=[done]))
    story.step(inp, observed(to, jobs=[done]))
    assert story.status is not None and story.status["upgrade"]["phase"] == "Complete", story.status
    return story
