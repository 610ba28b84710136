"""Upgrades, migrations and rollbacks driven by the real operator on the local control plane.

kwok runs no container, so each test plays the app's migration report (the JSON `aperag migrate` writes
to its termination-message file) through `spec.upgrade.migrationJob` pod metadata, per action:
`kwok.aperag.io/termination-message-<action>` (the report), `kwok.aperag.io/fail-<action>` (the pod
fails) and `kwok.aperag.io/hang-<action>` (it never ends; the Job's deadline fails it). A release whose
app image is `kwok.invalid/aperag:never-ready` has Deployment pods that never become ready. The commands
themselves run for real against PostgreSQL in tests/app/test_migration_job_commands.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.controlplane.localcluster import NEVER_READY_IMAGE, start_process, stop_process
from tests.e2e.conftest import OperatorProcess, apply_yaml, kget, kubeblocks_simulator, start_operator
from tests.e2e.test_operator_core import cond, manifest, status, wait_idle
from tests.harness.cluster import Cluster
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.operator]

REV1, REV2 = "0002", "0003"


def report(action: str, before: list[str], current: list[str], ok: bool = True, reason: str | None = None) -> str:
    body: dict[str, Any] = {
        "ok": ok, "action": action, "target": "head" if action == "upgrade" else (current or ["base"])[0],
        "heads": current, "before": before, "current": current, "changed": before != current,
        "up_to_date": ok, "message": "played by kwok",
    }  # fmt: skip
    if reason:
        body["reason"] = reason
    return json.dumps(body)


def upgrade_spec(
    version: str,
    *,
    upgrade: str | None = None,
    downgrade: str | None = None,
    fail: tuple[str, ...] = (),
    hang: tuple[str, ...] = (),
    slow: tuple[str, ...] = (),
    image: str | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """A spec at ``version`` whose migration pods end as told (per action)."""
    annotations = {"kwok.aperag.io/termination-message": upgrade or report("upgrade", [], [REV1])}
    if upgrade:
        annotations["kwok.aperag.io/termination-message-upgrade"] = upgrade
    if downgrade:
        annotations["kwok.aperag.io/termination-message-downgrade"] = downgrade
    labels = {
        f"kwok.aperag.io/{outcome}-{action}": "true"
        for outcome, actions in (("fail", fail), ("hang", hang), ("slow", slow))
        for action in actions
    }
    spec: dict[str, Any] = {
        "version": version,
        "components": {"api": {"replicas": 1}, "worker": {"replicas": 1}},
        "upgrade": {
            "migrationTimeoutSeconds": 30,
            "progressDeadlineSeconds": 30,
            **settings,
            "migrationJob": {"podLabels": labels, "podAnnotations": annotations},
        },
    }
    if image is not None:
        repository, _, tag = image.rpartition(":")
        spec["image"] = {"repository": repository, "tag": tag}
    return spec


def apply(cluster: Cluster, namespace: str, name: str, spec: dict[str, Any], **meta: Any) -> None:
    version = spec["version"]
    body = json.loads(manifest(name, namespace, {k: v for k, v in spec.items() if k != "version"}, **meta))
    body["spec"]["version"] = version
    apply_yaml(cluster, json.dumps(body))


def upgrade_status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = status(cluster, ns, name).get("upgrade") or {}
    return result


def history(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = status(cluster, ns, name).get("history") or []
    return result


def jobs(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    listing = kget(
        cluster, ns, "jobs", "-l", f"app.kubernetes.io/instance={name},app.kubernetes.io/component=migration"
    )
    items: list[dict[str, Any]] = sorted(
        (listing or {"items": []})["items"], key=lambda j: j["metadata"]["creationTimestamp"]
    )
    return items


def job_command(job: dict[str, Any]) -> list[str]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return [*container["command"], *container.get("args", [])]


def deployment_images(cluster: Cluster, ns: str, name: str) -> dict[str, str]:
    out = {}
    for component in ("api", "worker", "beat"):
        dep = kget(cluster, ns, "deployment", f"{name}-{component}")
        if dep is not None:
            out[component] = dep["spec"]["template"]["spec"]["containers"][0]["image"]
    return out


def reasons(cluster: Cluster, ns: str, name: str) -> list[str]:
    evs = kget(cluster, ns, "events", "--field-selector", f"involvedObject.name={name}") or {"items": []}
    return [e["reason"] for e in sorted(evs["items"], key=lambda e: e.get("eventTime") or e["firstTimestamp"])]


async def settled(
    cluster: Cluster, ns: str, name: str, version: str, *, phase: str = "Complete", limit: float = 120
) -> None:
    """The last operation ended (``phase``) and ``version`` runs."""

    def done() -> bool:
        st = status(cluster, ns, name)
        return (st.get("upgrade") or {}).get("phase") == phase and st.get("version") == version

    await wait_until(done, timeout=limit, what=f"{ns}/{name} {phase} with {version} running")


async def installed(cluster: Cluster, ns: str, name: str, spec: dict[str, Any] | None = None) -> None:
    apply(cluster, ns, name, spec or upgrade_spec("0.5.0", upgrade=report("upgrade", [], [REV1])))
    await settled(cluster, ns, name, "0.5.0")
    await wait_until(lambda: cond(cluster, ns, name, "Ready").get("status") == "True", timeout=60, what="Ready")
    assert history(cluster, ns, name)[-1]["revision"] == REV1


@pytest.fixture(autouse=True)
def kubeblocks(upstream_crds: list[str], cluster: Cluster, namespace: str) -> Iterator[None]:
    with kubeblocks_simulator(cluster, namespace) as errors:
        yield
    assert errors == []


# --- the happy path ---------------------------------------------------------------------------------------


async def test_an_upgrade_migrates_then_rolls_then_records(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    await installed(cluster, namespace, "rag")
    first = jobs(cluster, namespace, "rag")
    assert [job_command(j) for j in first] == [["aperag", "migrate", "upgrade", "head"]]

    apply(cluster, namespace, "rag", upgrade_spec("0.6.0", upgrade=report("upgrade", [REV1], [REV2])))
    await settled(cluster, namespace, "rag", "0.6.0")

    (job,) = [j for j in jobs(cluster, namespace, "rag") if j not in first]
    image = job["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith(":0.6.0")  # the NEW image migrates
    assert set(deployment_images(cluster, namespace, "rag").values()) == {image}
    api = kget(cluster, namespace, "deployment", "rag-api") or {}
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0  # no downtime while rolling
    records = history(cluster, namespace, "rag")
    assert [(r["version"], r["revision"], r["outcome"]) for r in records] == [
        ("0.5.0", REV1, "Succeeded"), ("0.6.0", REV2, "Succeeded")
    ]  # fmt: skip
    assert upgrade_status(cluster, namespace, "rag")["running"]["revision"] == REV2
    story = reasons(cluster, namespace, "rag")
    for step in ("UpgradeStarted", "MigrationStarted", "MigrationSucceeded", "RollingOut", "UpgradeSucceeded"):
        assert step in story, story
    start = story.index("UpgradeStarted")
    assert story.index("MigrationSucceeded", start) < story.index("RollingOut", start)
    table = cluster.kubectl("get", "aperag", "rag", "-n", namespace).stdout
    assert "0.6.0" in table.splitlines()[1]


# --- automatic rollback ----------------------------------------------------------------------------------------


async def test_a_failed_migration_is_rolled_back_and_not_retried(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    await installed(cluster, namespace, "rag")
    serving = kget(cluster, namespace, "deployment", "rag-api") or {}
    failed = report("upgrade", [REV1], [REV2], ok=False, reason="MigrationFailed")  # moved, then failed
    apply(cluster, namespace, "rag", upgrade_spec(
        "0.6.0", upgrade=failed, downgrade=report("downgrade", [REV2], [REV1]), fail=("upgrade",)))  # fmt: skip
    await settled(cluster, namespace, "rag", "0.5.0", phase="Failed")

    degraded = cond(cluster, namespace, "rag", "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "MigrationFailed"
    assert "rolled back" in degraded["message"]
    after = kget(cluster, namespace, "deployment", "rag-api") or {}
    assert after["metadata"]["generation"] == serving["metadata"]["generation"]  # never touched
    commands = [job_command(j) for j in jobs(cluster, namespace, "rag")]
    assert commands[-1] == ["aperag", "migrate", "downgrade", REV1]
    downgrade = jobs(cluster, namespace, "rag")[-1]
    assert downgrade["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":0.6.0")  # the new image
    count = len(commands)
    await wait_idle(operator, namespace, "rag", cycles=3)
    assert len(jobs(cluster, namespace, "rag")) == count  # the same target is not retried

    cluster.kubectl("annotate", "-n", namespace, "aperag/rag", "aperag.io/retry-upgrade=1")
    await wait_until(lambda: len(jobs(cluster, namespace, "rag")) > count, timeout=30, what="a retry Job")


async def test_a_migration_that_times_out_is_rolled_back(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    await installed(cluster, namespace, "rag")
    apply(cluster, namespace, "rag", upgrade_spec(
        "0.6.0", upgrade=report("upgrade", [REV1], [REV2]), downgrade=report("downgrade", [REV2], [REV1]),
        hang=("upgrade",)))  # fmt: skip
    await settled(cluster, namespace, "rag", "0.5.0", phase="Failed", limit=150)
    assert cond(cluster, namespace, "rag", "Degraded")["reason"] == "MigrationFailed"
    upgrade_job = jobs(cluster, namespace, "rag")[1]
    failed = [c for c in upgrade_job["status"].get("conditions", []) if c["type"] == "Failed"]
    assert failed and failed[0]["reason"] == "DeadlineExceeded"
    new_image = upgrade_job["spec"]["template"]["spec"]["containers"][0]["image"]
    assert set(deployment_images(cluster, namespace, "rag").values()) == {new_image.replace("0.6.0", "0.5.0")}


async def test_a_rollout_that_fails_its_health_gate_is_rolled_back(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    await installed(cluster, namespace, "rag")
    old_images = deployment_images(cluster, namespace, "rag")
    apply(cluster, namespace, "rag", upgrade_spec(
        "0.6.0", upgrade=report("upgrade", [REV1], [REV2]), downgrade=report("downgrade", [REV2], [REV1]),
        image=NEVER_READY_IMAGE))  # fmt: skip
    await wait_until(lambda: set(deployment_images(cluster, namespace, "rag").values()) == {NEVER_READY_IMAGE},
                     timeout=60, what="the new pods rolled out")  # fmt: skip
    await settled(cluster, namespace, "rag", "0.5.0", phase="Failed", limit=150)

    assert cond(cluster, namespace, "rag", "Degraded")["reason"] == "RolloutFailed"
    assert deployment_images(cluster, namespace, "rag") == old_images  # the previous release serves again
    assert job_command(jobs(cluster, namespace, "rag")[-1]) == ["aperag", "migrate", "downgrade", REV1]
    story = reasons(cluster, namespace, "rag")
    assert story.index("RollingBack") < story.index("DowngradeStarted")  # old pods first, then the schema
    await wait_until(lambda: status(cluster, namespace, "rag")["components"]["api"]["isReady"], timeout=60,
                     what="old api pods ready")  # fmt: skip


async def test_a_failed_downgrade_stops_with_rollback_failed(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    await installed(cluster, namespace, "rag")
    old_images = deployment_images(cluster, namespace, "rag")
    apply(cluster, namespace, "rag", upgrade_spec(
        "0.6.0", upgrade=report("upgrade", [REV1], [REV2]),
        downgrade=report("downgrade", [REV2], [REV2], ok=False, reason="MigrationFailed"),
        fail=("downgrade",), image=NEVER_READY_IMAGE))  # fmt: skip
    await wait_until(lambda: upgrade_status(cluster, namespace, "rag").get("phase") == "RollbackFailed",
                     timeout=150, what="RollbackFailed")  # fmt: skip
    degraded = cond(cluster, namespace, "rag", "Degraded")
    assert degraded["reason"] == "RollbackFailed" and degraded["message"]
    assert deployment_images(cluster, namespace, "rag") == old_images  # what serves is kept
    count = len(jobs(cluster, namespace, "rag"))
    await wait_idle(operator, namespace, "rag", cycles=3)
    assert len(jobs(cluster, namespace, "rag")) == count  # never a loop


# --- manual rollback -------------------------------------------------------------------------------------------


async def test_a_manual_rollback_to_a_recorded_version(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    await installed(cluster, namespace, "rag")
    apply(cluster, namespace, "rag", upgrade_spec("0.6.0", upgrade=report("upgrade", [REV1], [REV2])))
    await settled(cluster, namespace, "rag", "0.6.0")
    new_image = deployment_images(cluster, namespace, "rag")["api"]

    apply(cluster, namespace, "rag", upgrade_spec("0.5.0", downgrade=report("downgrade", [REV2], [REV1])))
    await settled(cluster, namespace, "rag", "0.5.0")
    last = jobs(cluster, namespace, "rag")[-1]
    assert job_command(last) == ["aperag", "migrate", "downgrade", REV1]
    assert last["spec"]["template"]["spec"]["containers"][0]["image"] == new_image  # the newer image downgrades
    assert set(deployment_images(cluster, namespace, "rag").values()) == {new_image.replace("0.6.0", "0.5.0")}
    assert history(cluster, namespace, "rag")[-1]["operation"] == "Rollback"
    story = reasons(cluster, namespace, "rag")
    assert story.index("RollbackStarted") < story.index("DowngradeStarted")


async def test_an_unknown_older_version_is_refused(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    await installed(cluster, namespace, "rag")
    before = jobs(cluster, namespace, "rag")
    images = deployment_images(cluster, namespace, "rag")
    apply(cluster, namespace, "rag", upgrade_spec("0.4.0"))
    await wait_until(lambda: cond(cluster, namespace, "rag", "Degraded").get("reason") == "UnknownVersion",
                     timeout=30, what="UnknownVersion")  # fmt: skip
    assert "0.4.0" in cond(cluster, namespace, "rag", "Degraded")["message"]
    await wait_idle(operator, namespace, "rag", cycles=2)
    assert jobs(cluster, namespace, "rag") == before and deployment_images(cluster, namespace, "rag") == images
    assert status(cluster, namespace, "rag")["version"] == "0.5.0"


# --- pre-upgrade backup ----------------------------------------------------------------------------------------


async def test_a_backup_runs_before_the_migration(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    await installed(cluster, namespace, "rag")
    apply(cluster, namespace, "rag", upgrade_spec("0.6.0", upgrade=report("upgrade", [REV1], [REV2]),
                                                  backupBeforeUpgrade=True))  # fmt: skip
    await settled(cluster, namespace, "rag", "0.6.0")
    ops = (kget(cluster, namespace, "opsrequests.operations.kubeblocks.io") or {"items": []})["items"]
    assert len(ops) == 1 and ops[0]["spec"]["type"] == "Backup" and ops[0]["spec"]["clusterName"] == "rag-pg"
    migration = jobs(cluster, namespace, "rag")[-1]
    assert ops[0]["status"]["phase"] == "Succeed"
    assert migration["metadata"]["creationTimestamp"] >= ops[0]["metadata"]["creationTimestamp"]
    story = reasons(cluster, namespace, "rag")
    assert story.index("BackupSucceeded") < story.index("MigrationStarted", story.index("UpgradeStarted"))


async def test_a_failed_backup_stops_the_upgrade_before_anything_changed(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    await installed(cluster, namespace, "rag")
    before = jobs(cluster, namespace, "rag")
    images = deployment_images(cluster, namespace, "rag")
    cluster.kubectl(
        "annotate", "-n", namespace, "clusters.apps.kubeblocks.io/rag-pg", "sim.kubeblocks.io/backup-phase=Failed"
    )
    apply(cluster, namespace, "rag", upgrade_spec("0.6.0", upgrade=report("upgrade", [REV1], [REV2]),
                                                  backupBeforeUpgrade=True))  # fmt: skip
    await wait_until(lambda: cond(cluster, namespace, "rag", "Degraded").get("reason") == "BackupFailed",
                     timeout=60, what="BackupFailed")  # fmt: skip
    assert jobs(cluster, namespace, "rag") == before  # no migration ran
    assert deployment_images(cluster, namespace, "rag") == images
    assert status(cluster, namespace, "rag")["version"] == "0.5.0"


# --- robustness ------------------------------------------------------------------------------------------------


async def test_a_paused_resource_starts_no_job_and_rolls_nothing(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    await installed(cluster, namespace, "rag")
    before = jobs(cluster, namespace, "rag")
    cluster.kubectl("annotate", "-n", namespace, "aperag/rag", "aperag.io/paused=true")
    await wait_until(
        lambda: cond(cluster, namespace, "rag", "Paused").get("status") == "True", timeout=20, what="Paused"
    )
    spec = upgrade_spec("0.6.0", upgrade=report("upgrade", [REV1], [REV2]))
    apply(cluster, namespace, "rag", spec, annotations={"aperag.io/paused": "true"})
    await wait_idle(operator, namespace, "rag", cycles=3)
    assert jobs(cluster, namespace, "rag") == before
    assert all(i.endswith(":0.5.0") for i in deployment_images(cluster, namespace, "rag").values())
    cluster.kubectl("annotate", "-n", namespace, "aperag/rag", "aperag.io/paused-")
    await settled(cluster, namespace, "rag", "0.6.0")


async def test_two_resources_upgrade_independently(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    await installed(cluster, namespace, "one")
    await installed(cluster, namespace, "two")
    apply(cluster, namespace, "one", upgrade_spec("0.6.0", upgrade=report("upgrade", [REV1], [REV2])))
    heads = report("upgrade", [REV1], [REV1], ok=False, reason="MultipleHeads")
    apply(cluster, namespace, "two", upgrade_spec("0.6.0", upgrade=heads, fail=("upgrade",)))
    await settled(cluster, namespace, "one", "0.6.0")
    await settled(cluster, namespace, "two", "0.5.0", phase="Failed")
    assert cond(cluster, namespace, "two", "Degraded")["reason"] == "MultipleHeads"
    # MultipleHeads changed nothing: no downgrade for "two"
    assert [job_command(j)[2] for j in jobs(cluster, namespace, "two")] == ["upgrade", "upgrade"]
    assert cond(cluster, namespace, "one", "Degraded")["status"] == "False"


# --- a restarted operator resumes where it stopped -------------------------------------------------------------


async def restart(cluster: Cluster, namespace: str, old: OperatorProcess, log: Path) -> OperatorProcess:
    old.kill()
    new = start_operator(cluster, log, "--namespace", namespace)
    await wait_until(new.synced, timeout=60, what="restarted operator synced")
    return new


async def test_an_operator_killed_at_every_step_resumes_without_running_a_migration_twice(
    cluster: Cluster, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    """Kill -9 while migrating, while rolling out, while rolling back and while downgrading: each time
    the restarted operator carries on from the status and the Jobs it finds, and creates no Job the step
    had already created."""
    await installed(cluster, namespace, "rag")
    state = Path(cluster.info.state_dir)
    op = operator
    # A slow migration, a release whose pods never get ready (the health gate fails after 30 s), and a
    # slow downgrade. Rolling back on kwok takes a second: the controller-manager is stopped meanwhile so
    # that the step lasts long enough to kill the operator in it.
    apply(cluster, namespace, "rag", upgrade_spec(
        "0.6.0", upgrade=report("upgrade", [REV1], [REV2]), downgrade=report("downgrade", [REV2], [REV1]),
        image=NEVER_READY_IMAGE, slow=("upgrade", "downgrade")))  # fmt: skip
    try:
        for index, step in enumerate(("Migrating", "RollingOut", "RollingBack", "Downgrading")):
            if step == "RollingBack":
                stop_process(state, "kube-controller-manager")
            await wait_until(lambda step=step: upgrade_status(cluster, namespace, "rag").get("phase") == step,
                             timeout=120, what=f"phase {step}")  # fmt: skip
            names_before = [j["metadata"]["name"] for j in jobs(cluster, namespace, "rag")]
            op = await restart(cluster, namespace, op, tmp_path / f"operator-{index}.log")
            await wait_idle(op, namespace, "rag", cycles=2)
            assert upgrade_status(cluster, namespace, "rag")["phase"] in (step, *NEXT[step])
            assert [j["metadata"]["name"] for j in jobs(cluster, namespace, "rag")][: len(names_before)] == names_before
            if step == "RollingBack":
                start_process(state, "kube-controller-manager")
        await settled(cluster, namespace, "rag", "0.5.0", phase="Failed", limit=150)
        assert cond(cluster, namespace, "rag", "Degraded")["reason"] == "RolloutFailed"
        commands = [job_command(j) for j in jobs(cluster, namespace, "rag")]
        assert commands.count(["aperag", "migrate", "upgrade", "head"]) == 2  # the install and one upgrade
        assert commands.count(["aperag", "migrate", "downgrade", REV1]) == 1
    finally:
        start_process(state, "kube-controller-manager")  # never leave it stopped
        op.stop()


#: The steps a step may have moved on to while the operator restarted.
NEXT = {
    "Migrating": ("RollingOut",),
    "RollingOut": ("RollingBack",),
    "RollingBack": (),
    "Downgrading": ("Failed",),
}
