"""The pre-upgrade backup: a KubeBlocks ``operations.kubeblocks.io/v1alpha1`` OpsRequest of type Backup
for the managed PostgreSQL Cluster.

The shape follows KubeBlocks 1.0's OpsRequest CRD (validated against the upstream schema in
tests/e2e/test_kubeblocks_schema.py) and the PostgreSQL addon's naming: the Cluster's default
BackupPolicy is ``<cluster>-<component>-backup-policy`` and ``pg-basebackup`` is its full-backup method.
KubeBlocks reports the outcome in ``status.phase``: Succeed, or Failed, Cancelled, Aborted (timeout).
"""

from __future__ import annotations

from dataclasses import dataclass

from aperag_operator.builders.common import Instance, Obj, Release, content_hash, finalize, metadata
from aperag_operator.builders.kubeblocks_cluster import ENGINES

OPSREQUEST_API_VERSION = "operations.kubeblocks.io/v1alpha1"
OPSREQUEST_KIND = "OpsRequest"
OPSREQUEST_PLURAL = "opsrequests"
COMPONENT = "backup"

BACKUP_METHOD = "pg-basebackup"
#: The Backup object (and, with Retain, its data) outlives the OpsRequest and the ApeRAG: it is what a
#: person restores from after an upgrade went wrong.
BACKUP_DELETION_POLICY = "Retain"
BACKUP_RETENTION = "30d"
#: How long KubeBlocks may wait for the Cluster to accept the backup (e.g. while it finishes an update).
PRECONDITION_DEADLINE_SECONDS = 300
#: Keep finished OpsRequests a day, for the operator to read and for people to inspect.
TTL_SECONDS = 86400

SUCCEEDED_PHASES = frozenset({"Succeed"})
FAILED_PHASES = frozenset({"Failed", "Cancelled", "Aborted"})

NAME_INFIX = "-backup-"
HASH_LENGTH = 8
#: The longest suffix a backup OpsRequest adds to the ApeRAG's name.
NAME_SUFFIX_MAX_LEN = len(NAME_INFIX) + HASH_LENGTH


@dataclass(frozen=True)
class BackupRequest:
    """A backup the upgrade machine wants before migrating to ``release``."""

    name: str
    cluster: str
    release: Release
    attempt: int


def opsrequest_name(aperag: str, release: Release, attempt: int) -> str:
    """``<aperag>-backup-<hash>`` of the release it protects and the attempt (stable across restarts)."""
    digest = content_hash({"image": release.image, "version": release.version, "attempt": attempt})
    return f"{aperag}{NAME_INFIX}{digest[:HASH_LENGTH]}"


def request(aperag: str, cluster: str, release: Release, attempt: int) -> BackupRequest:
    return BackupRequest(opsrequest_name(aperag, release, attempt), cluster, release, attempt)


def backup_policy_name(cluster: str) -> str:
    return f"{cluster}-{ENGINES['postgresql'].component}-backup-policy"


def build(inst: Instance, backup: BackupRequest) -> Obj:
    meta = metadata(inst, backup.name, COMPONENT)
    meta["annotations"] = {"aperag.io/upgrade-to": backup.release.version}
    return finalize(
        {
            "apiVersion": OPSREQUEST_API_VERSION,
            "kind": OPSREQUEST_KIND,
            "metadata": meta,
            "spec": {
                "type": "Backup",
                "clusterName": backup.cluster,
                "backup": {
                    "backupPolicyName": backup_policy_name(backup.cluster),
                    "backupMethod": BACKUP_METHOD,
                    "deletionPolicy": BACKUP_DELETION_POLICY,
                    "retentionPeriod": BACKUP_RETENTION,
                },
                "timeoutSeconds": inst.spec.upgrade.backup_timeout_seconds,
                "preConditionDeadlineSeconds": PRECONDITION_DEADLINE_SECONDS,
                "ttlSecondsAfterSucceed": TTL_SECONDS,
                "ttlSecondsAfterUnsuccessfulCompletion": TTL_SECONDS,
            },
        }
    )
