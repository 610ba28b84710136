"""Reading Jobs, their pods' termination messages, OpsRequests and Deployments into the machine's
observations (pure helpers the operator's glue calls)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aperag_operator.builders import deployment
from aperag_operator.builders.common import Instance, Release
from aperag_operator.upgrade import observe_backup, observe_deployments, observe_job, parse_report

from .helpers import instance

REPORT = {
    "ok": False,
    "action": "upgrade",
    "target": "head",
    "heads": ["0003"],
    "before": ["0002"],
    "current": ["0002"],
    "changed": False,
    "reason": "MigrationFailed",
    "message": "boom",
}


def job(conditions: list[dict[str, str]] | None = None, name: str = "demo-migrate-1") -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"conditions": conditions or []}}


def pod(message: str | None, *, created: str = "2026-11-30T10:00:00Z") -> dict[str, Any]:
    terminated: dict[str, Any] = {"exitCode": 1, "reason": "Error"}
    if message is not None:
        terminated["message"] = message
    status = {"name": "migrate", "state": {"terminated": terminated}}
    return {"metadata": {"creationTimestamp": created}, "status": {"containerStatuses": [status]}}


def test_parse_report() -> None:
    parsed = parse_report(json.dumps(REPORT))
    assert parsed is not None
    assert (parsed.ok, parsed.reason, parsed.before, parsed.current, parsed.changed) == (
        False, "MigrationFailed", ("0002",), ("0002",), False,
    )  # fmt: skip
    assert parse_report("Traceback (most recent call last): ...") is None
    assert parse_report('{"unrelated": true}') is None
    assert parse_report("") is None
    partial = parse_report('{"ok": true, "action": "upgrade"}')
    assert partial is not None and partial.current is None and partial.changed is None


@pytest.mark.parametrize(
    "conditions, state, reason",
    [
        ([], "Running", ""),
        ([{"type": "Complete", "status": "True"}], "Succeeded", ""),
        (
            [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "too long"}],
            "Failed",
            "DeadlineExceeded",
        ),
        # FailureTarget comes first, Failed only once the pods are gone: the Job is not over before.
        ([{"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy"}], "Running", ""),
        ([{"type": "Failed", "status": "False"}], "Running", ""),
    ],
)
def test_job_state(conditions: list[dict[str, str]], state: str, reason: str) -> None:
    observed = observe_job(job(conditions), [])
    assert (observed.name, observed.state, observed.reason) == ("demo-migrate-1", state, reason)


def test_report_comes_from_the_newest_pod() -> None:
    newer = {**REPORT, "message": "second try"}
    pods = [
        pod(json.dumps(newer), created="2026-11-30T10:05:00Z"),
        pod(json.dumps(REPORT), created="2026-11-30T10:00:00Z"),
    ]
    observed = observe_job(job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]), pods)
    assert observed.report is not None and observed.report.message == "second try"


def test_a_message_that_is_not_a_report_is_kept_as_the_log_tail() -> None:
    observed = observe_job(job([{"type": "Failed", "status": "True"}]), [pod("ImportError: no module named x")])
    assert observed.report is None and observed.log_tail == "ImportError: no module named x"
    assert observe_job(job(), [pod(None)]).log_tail == ""


def test_backup_phase_and_message() -> None:
    ops = {
        "metadata": {"name": "demo-backup-1"},
        "status": {"phase": "Failed", "conditions": [{"type": "Failed", "status": "True", "message": "disk full"}]},
    }
    observed = observe_backup(ops)
    assert (observed.name, observed.phase, observed.message) == ("demo-backup-1", "Failed", "disk full")
    assert observe_backup({"metadata": {"name": "x"}}).phase == ""


def test_deployments_by_component() -> None:
    inst = instance()
    held = Instance(inst.name, inst.namespace, inst.uid, inst.spec, release=Release("0.4.0", "r/aperag:0.4.0"))
    api = deployment.build(held, "api")
    api["metadata"]["generation"] = 2
    api["status"] = {"observedGeneration": 2, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2,
                     "availableReplicas": 2}  # fmt: skip
    observed = observe_deployments(inst.spec, {"api": api, "worker": None})
    assert set(observed) == {"api"}
    assert (observed["api"].version, observed["api"].image) == ("0.4.0", "r/aperag:0.4.0")
    assert observed["api"].state.is_ready
