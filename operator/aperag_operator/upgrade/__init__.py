"""The upgrade state machine (pure: no client, no clock, no I/O). See docs/design.md, "Upgrades"."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aperag_operator.upgrade.types import (
    RETRY_ANNOTATION,
    BackupObservation,
    DeploymentObservation,
    Event,
    JobObservation,
    MigrationReport,
    UpgradeDecision,
    UpgradeInputs,
    UpgradeObserved,
)

__all__ = [
    "RETRY_ANNOTATION",
    "BackupObservation",
    "DeploymentObservation",
    "Event",
    "JobObservation",
    "MigrationReport",
    "UpgradeDecision",
    "UpgradeInputs",
    "UpgradeObserved",
    "decide",
    "observe_backup",
    "observe_deployments",
    "observe_job",
    "parse_report",
]


def decide(
    inputs: UpgradeInputs, previous: dict[str, Any] | None, observed: UpgradeObserved, now: datetime
) -> UpgradeDecision:
    raise NotImplementedError


def parse_report(message: str) -> MigrationReport | None:
    raise NotImplementedError


def observe_job(job: dict[str, Any], pods: list[dict[str, Any]]) -> JobObservation:
    raise NotImplementedError


def observe_backup(ops: dict[str, Any]) -> BackupObservation:
    raise NotImplementedError


def observe_deployments(spec: Any, deployments: dict[str, Any]) -> dict[str, DeploymentObservation]:
    raise NotImplementedError
