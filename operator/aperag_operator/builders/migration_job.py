"""The migration Job: a ``batch/v1`` Job running ``aperag migrate upgrade head`` or ``aperag migrate
downgrade <revision>`` with a given release's image.

The pod is an app pod (:mod:`.app_pod`): the same database wiring, settings and restricted security as
the Deployments. The app writes its JSON report (docs/app.md) to the termination-message file, which
the operator reads from ``status.containerStatuses[].state.terminated.message`` of the Job's pod.

Jobs are created, never updated (a Job's pod template is immutable) and never deleted by the operator:
``ttlSecondsAfterFinished`` removes them a day after they finish, long after the operator read the
result, and ``kubectl logs job/<name>`` works until then.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from aperag_operator.builders.app_pod import MIGRATION_REPORT_PATH, app_container, pod_spec
from aperag_operator.builders.common import (
    Instance,
    Obj,
    Release,
    content_hash,
    finalize,
    labels,
    metadata,
)

Action = Literal["upgrade", "downgrade"]

COMPONENT = "migration"
CONTAINER = "migrate"
#: Label on the Job and its pod: upgrade or downgrade.
ACTION_LABEL = "aperag.io/migration-action"
#: Annotations on the Job: the revision it migrates to, and the attempt it belongs to.
REVISION_ANNOTATION = "aperag.io/migration-revision"
ATTEMPT_ANNOTATION = "aperag.io/upgrade-attempt"

NAME_INFIX = "-migrate-"
HASH_LENGTH = 8
#: The longest suffix a migration Job adds to the ApeRAG's name (Job names must stay <= 63 characters:
#: the Job controller puts the name into a label of the pods).
NAME_SUFFIX_MAX_LEN = len(NAME_INFIX) + HASH_LENGTH

#: A retry only helps for a transient failure (exit code 3: the database could not be reached); the
#: pod failure policy fails the Job at once for exit codes 1 and 2 (the app's "refused or failed" and
#: "configuration"), which would fail the same way again.
BACKOFF_LIMIT = 2
FAIL_AT_ONCE_EXIT_CODES = [1, 2]
#: A day: long enough for the operator to read the result (even after a restart) and for kubectl logs.
TTL_SECONDS_AFTER_FINISHED = 86400


@dataclass(frozen=True)
class MigrationJobRequest:
    """A migration Job the upgrade machine wants: what to run, with which release's image."""

    name: str
    action: Action
    release: Release
    #: ``head`` for an upgrade; the destination revision (``base`` included) for a downgrade.
    revision: str
    attempt: int


def job_name(aperag: str, action: Action, release: Release, revision: str, attempt: int) -> str:
    """``<aperag>-migrate-<hash>``: derived from everything that makes the Job what it is, so a restarted
    operator computes the same name and finds the Job it created, and a new attempt gets a new Job."""
    digest = content_hash(
        {
            "action": action,
            "image": release.image,
            "version": release.version,
            "revision": revision,
            "attempt": attempt,
        }
    )[:HASH_LENGTH]
    return f"{aperag}{NAME_INFIX}{digest}"


def request(aperag: str, action: Action, release: Release, revision: str, attempt: int) -> MigrationJobRequest:
    """The request for a Job, named by :func:`job_name`."""
    name = job_name(aperag, action, release, revision, attempt)
    return MigrationJobRequest(name, action, release, revision, attempt)


def command(action: Action, revision: str) -> list[str]:
    return ["aperag", "migrate", action, revision]


def build(inst: Instance, job: MigrationJobRequest, env: Sequence[Obj] = ()) -> Obj:
    """The Job for ``job``. ``env`` is what contributors add to the app containers (the database
    connection settings): the same wiring as the Deployments'."""
    db_env = tuple(env)
    upgrade = inst.spec.upgrade
    api = inst.spec.components.api
    container: Obj = {
        "name": CONTAINER,
        **app_container(inst, COMPONENT, job.release.image, db_env),
        "command": command(job.action, job.revision),
        "terminationMessagePath": MIGRATION_REPORT_PATH,
        # The report when the app wrote one; the end of the log when it died before (an import error).
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    job_meta = metadata(inst, job.name, COMPONENT, job.release.version)
    job_meta["labels"][ACTION_LABEL] = job.action
    job_meta["annotations"] = {REVISION_ANNOTATION: job.revision, ATTEMPT_ANNOTATION: str(job.attempt)}
    pod_labels = {
        **upgrade.migration_job.pod_labels,
        **labels(inst, COMPONENT, job.release.version),
        ACTION_LABEL: job.action,
    }
    return finalize(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": job_meta,
            "spec": {
                "backoffLimit": BACKOFF_LIMIT,
                "podFailurePolicy": {
                    "rules": [
                        {
                            "action": "FailJob",
                            "onExitCodes": {
                                "containerName": CONTAINER,
                                "operator": "In",
                                "values": FAIL_AT_ONCE_EXIT_CODES,
                            },
                        },
                        # An evicted or preempted pod is not the migration's fault: retry it.
                        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                    ]
                },
                "activeDeadlineSeconds": upgrade.migration_timeout_seconds,
                "ttlSecondsAfterFinished": TTL_SECONDS_AFTER_FINISHED,
                "template": {
                    "metadata": {
                        "labels": pod_labels,
                        "annotations": dict(upgrade.migration_job.pod_annotations),
                    },
                    "spec": {
                        **pod_spec(inst, COMPONENT),
                        "restartPolicy": "Never",
                        "terminationGracePeriodSeconds": 30,
                        # Migrations run where the API runs.
                        "nodeSelector": dict(api.node_selector),
                        "tolerations": [t.model_dump(by_alias=True, exclude_none=True) for t in api.tolerations],
                        "containers": [container],
                    },
                },
            },
        }
    )
