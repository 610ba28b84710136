"""What one status transition tells about upgrades, for the operator's metrics (pure: dicts in, facts out).

The machine keeps its state in ``status.upgrade`` and ``status.history`` and tells its story in Events;
the metrics count what finished between the status before a reconcile and the status it wrote:

* operations that ended (a new ``status.history`` entry: Install, Upgrade or Rollback, and how it ended);
* migration and downgrade Jobs whose result was read (the step the machine left, how long it ran);
* rollbacks: automatic (a failed step undone: ``RolledBack``), manual (``spec.version`` set back:
  ``RollbackSucceeded``), or failed (``RollbackFailed``).

Counted once: the controller calls this only after the new status was written.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aperag_operator.upgrade.machine import DOWNGRADING, MIGRATING, ROLLBACK, ROLLBACK_FAILED

SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
AUTOMATIC, MANUAL = "automatic", "manual"
#: Every label value the metrics may take, so their series exist (at 0) before the first event: an alert
#: on ``increase()`` cannot see the first increment of a series that did not exist.
OPERATIONS = ("Install", "Upgrade", "Rollback")
OUTCOMES = ("Succeeded", "Failed", "RollbackFailed", "Cancelled")
MIGRATION_ACTIONS = ("upgrade", "downgrade")
MIGRATION_OUTCOMES = (SUCCEEDED, FAILED, CANCELLED)
ROLLBACK_TRIGGERS = (AUTOMATIC, MANUAL)
ROLLBACK_OUTCOMES = (SUCCEEDED, FAILED)


@dataclass(frozen=True)
class Finished:
    """An operation that ended (a ``status.history`` entry)."""

    operation: str
    outcome: str


@dataclass(frozen=True)
class MigrationRun:
    """A migration (``upgrade``) or downgrade Job whose result the machine read."""

    action: str
    outcome: str
    #: From the step's start (``status.upgrade.stepStartedAt``) to now; None when the start is unknown.
    seconds: float | None


@dataclass(frozen=True)
class Rollback:
    trigger: str
    outcome: str


@dataclass(frozen=True)
class Facts:
    finished: tuple[Finished, ...] = ()
    migrations: tuple[MigrationRun, ...] = ()
    rollbacks: tuple[Rollback, ...] = ()


def _parse(stamp: object) -> datetime | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def _upgrade(status: Mapping[str, Any] | None) -> Mapping[str, Any]:
    value = (status or {}).get("upgrade")
    return value if isinstance(value, Mapping) else {}


def finished_operations(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> tuple[Finished, ...]:
    """The ``status.history`` entries of ``new`` that ``old`` did not have (the history is trimmed at its
    oldest end, so an entry is new when no entry of the old history equals it)."""
    before = list((old or {}).get("history") or [])
    return tuple(
        Finished(str(entry.get("operation", "")), str(entry.get("outcome", "")))
        for entry in (new or {}).get("history") or []
        if entry not in before
    )


def migration_runs(
    old: Mapping[str, Any] | None, new: Mapping[str, Any] | None, reasons: Collection[str], now: datetime
) -> tuple[MigrationRun, ...]:
    """The Job step the machine left between ``old`` and ``new`` (at most one per transition)."""
    before, after = _upgrade(old), _upgrade(new)
    phase = before.get("phase")
    if phase not in (MIGRATING, DOWNGRADING) or not before.get("job"):
        return ()
    if after.get("phase") == phase and after.get("job") == before.get("job"):
        return ()  # still running
    action = "upgrade" if phase == MIGRATING else "downgrade"
    success = "MigrationSucceeded" if phase == MIGRATING else "DowngradeSucceeded"
    if success in reasons:
        outcome = SUCCEEDED
    elif "UpgradeCancelled" in reasons:
        outcome = CANCELLED
    else:
        outcome = FAILED
    started = _parse(before.get("stepStartedAt"))
    seconds = max(0.0, (now - started).total_seconds()) if started is not None else None
    return (MigrationRun(action, outcome, seconds),)


def rollbacks(new: Mapping[str, Any] | None, reasons: Collection[str]) -> tuple[Rollback, ...]:
    out: list[Rollback] = []
    if "RolledBack" in reasons:  # a failed (or cancelled) step undone: the running release serves again
        out.append(Rollback(AUTOMATIC, SUCCEEDED))
    if "RollbackSucceeded" in reasons:  # spec.version set back to a recorded version
        out.append(Rollback(MANUAL, SUCCEEDED))
    if ROLLBACK_FAILED in reasons:
        manual = _upgrade(new).get("operation") == ROLLBACK
        out.append(Rollback(MANUAL if manual else AUTOMATIC, FAILED))
    return tuple(out)


def facts(
    old: Mapping[str, Any] | None, new: Mapping[str, Any] | None, reasons: Collection[str], now: datetime
) -> Facts:
    """Everything the transition ``old`` -> ``new`` (with the Events it posted) tells the metrics."""
    return Facts(finished_operations(old, new), migration_runs(old, new, reasons, now), rollbacks(new, reasons))
