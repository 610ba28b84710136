"""The upgrade state machine (pure: no client, no clock, no I/O). See docs/design.md, "Upgrades".

``decide(inputs, previous_status, observed, now) -> UpgradeDecision`` is the whole interface; the
``observe_*`` helpers turn what the operator read from the API into ``UpgradeObserved``.
"""

from __future__ import annotations

from aperag_operator.upgrade.machine import decide
from aperag_operator.upgrade.observe import observe_backup, observe_deployments, observe_job, parse_report
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
