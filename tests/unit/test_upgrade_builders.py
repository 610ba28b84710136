"""The upgrade's builders: the migration Job, the backup OpsRequest, and Deployments running a release
other than the spec's (golden files plus targeted checks)."""

from __future__ import annotations

from typing import Any

from aperag_operator.builders import (
    app_pod,
    backup_opsrequest,
    configmap,
    deployment,
    migration_job,
    service,
)
from aperag_operator.builders.children import desired_children
from aperag_operator.builders.common import Instance, Release, target_release
from aperag_operator.builders.database_env import build_database_env
from aperag_operator.spec.databases import DatabasesSpec
from aperag_operator.spec.model import ImageSpec

from .golden import assert_golden
from .helpers import instance

REPO = ImageSpec().repository
OLD = Release("0.4.0", f"{REPO}:0.4.0")
NEW = Release("0.5.0", f"{REPO}:0.5.0")

UPGRADE_SPEC: dict[str, Any] = {
    "upgrade": {
        "migrationTimeoutSeconds": 120,
        "migrationJob": {
            "podLabels": {"kwok.aperag.io/fail": "true"},
            "podAnnotations": {"kwok.aperag.io/termination-message": '{"ok": false}'},
        },
    },
    "components": {"api": {"nodeSelector": {"pool": "web"}, "tolerations": [{"key": "web", "operator": "Exists"}]}},
    "app": {
        "env": [{"name": "LLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "llm", "key": "apiKey"}}}],
        "envFrom": [{"secretRef": {"name": "extra"}}],
    },
}


DATABASE_ENV = build_database_env("demo", DatabasesSpec())


def upgrade_job(inst: Instance, attempt: int = 1) -> dict[str, Any]:
    request = migration_job.request(inst.name, "upgrade", NEW, "head", attempt)
    return migration_job.build(inst, request, DATABASE_ENV)


# --- golden files -----------------------------------------------------------------------------------


def test_golden_migration_jobs() -> None:
    minimal = instance()
    full = instance(UPGRADE_SPEC)
    downgrade = migration_job.request(full.name, "downgrade", NEW, "0002", 3)
    assert_golden("migration-jobs", [upgrade_job(minimal), migration_job.build(full, downgrade, DATABASE_ENV)])


def test_golden_backup_opsrequest() -> None:
    inst = instance({"upgrade": {"backupBeforeUpgrade": True}})
    ops = backup_opsrequest.build(inst, backup_opsrequest.request("demo", "demo-pg", NEW, 2))
    assert_golden("backup-opsrequest", [ops])


def test_golden_deployments_running_an_older_release() -> None:
    inst = instance({"components": {"flower": {"enabled": True}}})
    held = Instance(inst.name, inst.namespace, inst.uid, inst.spec, inst.generation, release=OLD)
    assert_golden("release-0.4.0", [d for d in desired_children(held) if d["kind"] == "Deployment"])


# --- the migration Job ---------------------------------------------------------------------------------


def test_job_name_is_stable_unique_per_attempt_and_short_enough() -> None:
    longest = "a" * 45  # the CRD's limit on metadata.name
    name = migration_job.job_name(longest, "upgrade", NEW, "head", 1)
    assert name == migration_job.job_name(longest, "upgrade", NEW, "head", 1)
    assert len(name) == 45 + migration_job.NAME_SUFFIX_MAX_LEN <= 63
    variants = {
        migration_job.job_name("demo", "upgrade", NEW, "head", 1),
        migration_job.job_name("demo", "downgrade", NEW, "head", 1),
        migration_job.job_name("demo", "upgrade", OLD, "head", 1),
        migration_job.job_name("demo", "upgrade", Release(NEW.version, "registry:5000/aperag:0.5.0"), "head", 1),
        migration_job.job_name("demo", "upgrade", NEW, "0002", 1),
        migration_job.job_name("demo", "upgrade", NEW, "head", 2),
    }
    assert len(variants) == 6
    backup = backup_opsrequest.opsrequest_name(longest, NEW, 1)
    assert len(backup) == 45 + backup_opsrequest.NAME_SUFFIX_MAX_LEN <= 63


def test_job_runs_the_migration_once_with_the_release_image() -> None:
    inst = instance({"upgrade": {"migrationTimeoutSeconds": 90}})
    job = upgrade_job(inst)
    spec = job["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == NEW.image
    assert container["command"] == ["aperag", "migrate", "upgrade", "head"]
    assert pod["restartPolicy"] == "Never"
    assert 0 < spec["backoffLimit"] <= 3
    assert spec["activeDeadlineSeconds"] == 90
    assert spec["ttlSecondsAfterFinished"] >= 3600
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["terminationMessagePath"] == "/dev/termination-log"
    env = {e["name"]: e for e in container["env"]}
    assert env["APERAG_MIGRATE_REPORT_FILE"]["value"] == container["terminationMessagePath"]
    rule = spec["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["containerName"] == container["name"]
    down = migration_job.build(inst, migration_job.request("demo", "downgrade", NEW, "0001", 1))
    assert down["spec"]["template"]["spec"]["containers"][0]["command"] == ["aperag", "migrate", "downgrade", "0001"]
    assert down["metadata"]["labels"][migration_job.ACTION_LABEL] == "downgrade"


def test_job_metadata_labels_and_owner() -> None:
    job = upgrade_job(instance(UPGRADE_SPEC))
    meta = job["metadata"]
    assert meta["namespace"] == "team-a"
    assert meta["labels"]["app.kubernetes.io/component"] == "migration"
    assert meta["labels"]["app.kubernetes.io/instance"] == "demo"
    assert meta["labels"]["app.kubernetes.io/version"] == NEW.version
    assert meta["annotations"][migration_job.REVISION_ANNOTATION] == "head"
    (owner,) = meta["ownerReferences"]
    assert owner["kind"] == "ApeRAG" and owner["controller"] is True
    template = job["spec"]["template"]["metadata"]
    assert template["labels"]["kwok.aperag.io/fail"] == "true"
    assert template["labels"]["app.kubernetes.io/component"] == "migration"
    assert template["annotations"] == {"kwok.aperag.io/termination-message": '{"ok": false}'}
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "web"} and pod["tolerations"] == [{"key": "web", "operator": "Exists"}]


def test_job_has_the_same_wiring_and_security_as_the_app() -> None:
    inst = instance(UPGRADE_SPEC)
    job_pod = upgrade_job(inst)["spec"]["template"]["spec"]
    worker_pod = deployment.build(inst, "worker", DATABASE_ENV)["spec"]["template"]["spec"]
    (job_c,) = job_pod["containers"]
    (worker_c,) = worker_pod["containers"]
    for key in ("securityContext", "envFrom"):
        assert job_c[key] == worker_c[key], key
    for key in ("securityContext", "serviceAccountName", "automountServiceAccountToken", "enableServiceLinks"):
        assert job_pod[key] == worker_pod[key], key
    assert job_c["env"] == app_pod.app_env(inst, "migration", DATABASE_ENV)
    job_env = {e["name"]: e for e in job_c["env"]}
    worker_env = {e["name"]: e for e in worker_c["env"]}
    # Every database variable and the user's env reach the migration exactly as they reach the app.
    for name in [e["name"] for e in DATABASE_ENV] + ["LLM_API_KEY"]:
        assert job_env[name] == worker_env[name], name
    assert job_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]  # never a literal secret
    assert {m["mountPath"] for m in job_c["volumeMounts"]} == {"/tmp"}
    assert job_c["securityContext"]["readOnlyRootFilesystem"] is True


def test_operator_labels_win_over_pod_labels() -> None:
    # The CRD refuses app.kubernetes.io/* in podLabels; the builder does not rely on it.
    inst = instance(UPGRADE_SPEC)
    spec = inst.spec.model_copy(deep=True)
    spec.upgrade.migration_job.pod_labels["app.kubernetes.io/instance"] = "other"
    forged = Instance(inst.name, inst.namespace, inst.uid, spec)
    labels = upgrade_job(forged)["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/instance"] == "demo"


# --- the backup OpsRequest -----------------------------------------------------------------------------


def test_backup_opsrequest_targets_the_managed_postgresql() -> None:
    inst = instance({"upgrade": {"backupBeforeUpgrade": True, "backupTimeoutSeconds": 900}})
    ops = backup_opsrequest.build(inst, backup_opsrequest.request("demo", "demo-pg", NEW, 1))
    assert ops["apiVersion"] == "operations.kubeblocks.io/v1alpha1" and ops["kind"] == "OpsRequest"
    spec = ops["spec"]
    assert spec["type"] == "Backup" and spec["clusterName"] == "demo-pg"
    assert spec["backup"]["backupPolicyName"] == "demo-pg-postgresql-backup-policy"
    assert spec["backup"]["backupMethod"] == "pg-basebackup"
    assert spec["timeoutSeconds"] == 900
    assert ops["metadata"]["ownerReferences"][0]["kind"] == "ApeRAG"


# --- Deployments running a given release -------------------------------------------------------------------


def test_deployments_run_the_given_release_while_the_rest_follows_the_spec() -> None:
    inst = instance({"components": {"flower": {"enabled": True}, "beat": {"image": "registry.local/beat:pinned"}}})
    held = Instance(inst.name, inst.namespace, inst.uid, inst.spec, release=OLD)
    for component in deployment.enabled_components(held):
        dep = deployment.build(held, component)
        template = dep["spec"]["template"]
        assert dep["metadata"]["labels"]["app.kubernetes.io/version"] == "0.4.0", component
        assert template["metadata"]["labels"]["app.kubernetes.io/version"] == "0.4.0", component
        image = template["spec"]["containers"][0]["image"]
        # A component's own image override stays.
        expected = "registry.local/beat:pinned" if component == "beat" else OLD.image
        assert image == expected, component
        assert deployment.release_image(held.spec, component, OLD) == image
    # Services and the ConfigMap carry the spec's version: they describe what is asked for.
    assert service.build(held, "api")["metadata"]["labels"]["app.kubernetes.io/version"] == "0.5.0"
    assert configmap.build(held)["metadata"]["labels"]["app.kubernetes.io/version"] == "0.5.0"


def test_without_a_release_the_deployments_run_the_target() -> None:
    inst = instance({"image": {"tag": "0.5.0-patch1"}})
    patched = Release("0.5.0", f"{REPO}:0.5.0-patch1")
    assert inst.workload_release == target_release(inst.spec) == patched
    as_target = Instance(inst.name, inst.namespace, inst.uid, inst.spec, release=inst.workload_release)
    for component in deployment.enabled_components(inst):
        assert deployment.build(inst, component) == deployment.build(as_target, component)
