"""What Argo CD and Prometheus see of what the real operator writes.

One ApeRAG goes through what users watch it go through (install, Ready, an upgrade under way, a failed
migration rolled back, paused, a change the operator has not seen yet, a missing Secret, an apply the
API server refuses) with the real operator on the local control plane. At each step:

* the status the operator wrote is run through Argo CD's health script (docs/argocd/, with lupa, as
  Argo CD runs it) and must give the health a user expects, so the script and the status cannot drift
  apart; ``UPDATE_ARGOCD_TESTDATA=1`` writes these statuses into the scripts' testdata (review the diff);
* the operator's /metrics is scraped and its values must have moved as they should.
"""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import OperatorProcess, apply_yaml, kget, kubeblocks_simulator, start_operator
from tests.e2e.test_operator_core import manifest
from tests.e2e.test_upgrades import REV1, REV2, apply, report, settled, upgrade_spec
from tests.harness import argocd
from tests.harness.cluster import Cluster
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.operator]

UPDATE = os.environ.get("UPDATE_ARGOCD_TESTDATA") == "1"
REV3 = "0004"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(autouse=True)
def kubeblocks(upstream_crds: list[str], cluster: Cluster, namespace: str) -> Iterator[None]:
    with kubeblocks_simulator(cluster, namespace) as errors:
        yield
    assert errors == []


# --- scraping --------------------------------------------------------------------------------------------


def scrape(op: OperatorProcess) -> Samples:
    url = op.liveness_url.rsplit("/", 1)[0] + "/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    """The sample's value; a missing sample fails the test (a metric that does not exist never passes)."""
    key = (metric, tuple(sorted(labels.items())))
    assert key in samples, f"no sample {metric}{labels}; have {sorted(k for k in samples if k[0] == metric)}"
    return samples[key]


def total(samples: Samples, metric: str, /, **labels: str) -> float:
    """The sum of every sample of ``metric`` whose labels include ``labels`` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == metric and want <= set(ls))


# --- Argo CD health ----------------------------------------------------------------------------------------


def normalized(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as testdata: what the health script reads, without the server's bookkeeping."""
    meta = obj["metadata"]
    keep = {k: meta[k] for k in ("name", "namespace", "generation", "labels", "annotations") if k in meta}
    annotations = {k: v for k, v in (keep.get("annotations") or {}).items() if not k.startswith("kubectl.kubernetes")}
    keep.pop("annotations", None)
    if annotations:
        keep["annotations"] = annotations
    keep["namespace"] = "default"
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": keep,
            "spec": obj.get("spec", {}), "status": obj.get("status", {})}  # fmt: skip


class Recorder:
    """Runs each captured object through its health script; with UPDATE_ARGOCD_TESTDATA=1 writes it to
    the script's testdata and its expected health to health_test.yaml."""

    def __init__(self) -> None:
        self.cases: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def check(self, group: str, kind: str, case: str, obj: dict[str, Any] | None, expected: str) -> dict[str, str]:
        assert obj is not None, f"{kind} for case {case} is missing"
        got = argocd.health(group, kind, obj)
        assert got["status"] == expected, f"{case}: {got} for status {json.dumps(obj.get('status'), indent=1)}"
        assert got["message"], got
        data = normalized(obj)
        self.cases.setdefault((group, kind), []).append(
            {"healthStatus": argocd.health(group, kind, data), "inputPath": f"testdata/{case}.yaml", "data": data}
        )
        return got

    def write(self) -> None:
        for (group, kind), cases in self.cases.items():
            folder = argocd.script_path(group, kind).parent
            tests = []
            for case in cases:
                path = folder / case["inputPath"]
                path.parent.mkdir(exist_ok=True)
                path.write_text(yaml.safe_dump(case["data"], sort_keys=False, width=120))
                tests.append({"healthStatus": case["healthStatus"], "inputPath": case["inputPath"]})
            header = (
                "# Written by tests/e2e/test_observability.py from what the real operator (and the KubeBlocks\n"
                "# simulator) wrote: UPDATE_ARGOCD_TESTDATA=1. Argo CD's format (resource_customizations).\n"
            )
            (folder / "health_test.yaml").write_text(header + yaml.safe_dump({"tests": tests}, sort_keys=False))


def aperag(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    return kget(cluster, ns, "aperag", name)


async def capture(cluster: Cluster, ns: str, name: str, ready: Any, what: str) -> dict[str, Any]:
    """The ApeRAG the first time ``ready(obj)`` holds."""

    def seen() -> dict[str, Any] | None:
        obj = aperag(cluster, ns, name)
        return obj if obj is not None and ready(obj) else None

    result: dict[str, Any] = await wait_until(seen, timeout=120, interval=0.1, what=what)
    return result


def upgrade_phase(obj: dict[str, Any]) -> str:
    return str(((obj.get("status") or {}).get("upgrade") or {}).get("phase", ""))


# --- the story ---------------------------------------------------------------------------------------------


async def test_what_the_operator_writes_has_the_health_argo_cd_should_show_and_the_metrics_follow(
    cluster: Cluster, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    ns, rec, op = namespace, Recorder(), operator
    group, kind = "aperag.io", "ApeRAG"
    await wait_until(op.synced, timeout=60, what="operator synced")
    m0 = scrape(op)
    assert value(m0, "aperag_operator_build_info", version=__import__("aperag_operator").__version__) == 1
    assert value(m0, "aperag_operator_upgrades_total", operation="Install", outcome="Succeeded") == 0
    assert value(m0, "aperag_operator_rollbacks_total", trigger="automatic", outcome="succeeded") == 0
    assert value(m0, "aperag_operator_workqueue_depth") == 0
    assert value(m0, "aperag_operator_workers") == 8

    # Install: Progressing until the first migration passed and the pods are ready, then Healthy.
    apply(cluster, ns, "rag", upgrade_spec("0.5.0", upgrade=report("upgrade", [], [REV1])))
    first = await capture(cluster, ns, "rag", lambda o: o.get("status"), "the first status")
    rec.check(group, kind, "installing", first, "Progressing")
    await settled(cluster, ns, "rag", "0.5.0")
    healthy = await capture(cluster, ns, "rag", lambda o: cond_of(o, "Ready") == "True", "Ready")
    rec.check(group, kind, "healthy", healthy, "Healthy")
    m1 = scrape(op)
    assert value(m1, "aperag_operator_upgrades_total", operation="Install", outcome="Succeeded") == 1
    assert value(m1, "aperag_operator_migration_duration_seconds_count", action="upgrade", outcome="succeeded") == 1
    assert value(m1, "aperag_operator_resource_ready", namespace=ns, name="rag") == 1
    assert value(m1, "aperag_operator_resources", phase="Ready") == 1
    assert value(m1, "aperag_operator_reconciles_total", result="success") > 0
    assert value(m1, "aperag_operator_reconcile_duration_seconds_count", result="success") > 0
    assert 0 <= value(m1, "aperag_operator_seconds_since_last_successful_reconcile", namespace=ns, name="rag") < 30

    # An upgrade under way (a slow migration): Progressing, though the old version still serves.
    apply(cluster, ns, "rag", upgrade_spec("0.6.0", upgrade=report("upgrade", [REV1], [REV2]), slow=("upgrade",)))
    migrating = await capture(cluster, ns, "rag", lambda o: upgrade_phase(o) == "Migrating", "Migrating")
    assert cond_of(migrating, "Ready") == "True"
    rec.check(group, kind, "upgrading", migrating, "Progressing")
    assert value(scrape(op), "aperag_operator_resources", phase="Migrating") == 1
    await settled(cluster, ns, "rag", "0.6.0")

    # A migration that fails after moving the schema: rolled back (Progressing while the downgrade runs),
    # then Degraded with the reason, the previous version serving.
    failed = report("upgrade", [REV2], [REV3], ok=False, reason="MigrationFailed")
    apply(cluster, ns, "rag", upgrade_spec(
        "0.7.0", upgrade=failed, downgrade=report("downgrade", [REV3], [REV2]), fail=("upgrade",),
        slow=("downgrade",)))  # fmt: skip
    rolling_back = await capture(cluster, ns, "rag", lambda o: upgrade_phase(o) == "Downgrading", "Downgrading")
    rec.check(group, kind, "rolling-back", rolling_back, "Progressing")
    await settled(cluster, ns, "rag", "0.6.0", phase="Failed")
    rolled_back = aperag(cluster, ns, "rag")
    got = rec.check(group, kind, "rolled-back", rolled_back, "Degraded")
    assert "MigrationFailed" in got["message"] and "rolled back" in got["message"]
    m2 = scrape(op)
    assert value(m2, "aperag_operator_upgrades_total", operation="Upgrade", outcome="Succeeded") == 1
    assert value(m2, "aperag_operator_upgrades_total", operation="Upgrade", outcome="Failed") == 1
    assert value(m2, "aperag_operator_rollbacks_total", trigger="automatic", outcome="succeeded") == 1
    assert value(m2, "aperag_operator_migration_duration_seconds_count", action="upgrade", outcome="succeeded") == 2
    assert value(m2, "aperag_operator_migration_duration_seconds_count", action="upgrade", outcome="failed") == 1
    downgrades = value(m2, "aperag_operator_migration_duration_seconds_count", action="downgrade", outcome="succeeded")
    assert downgrades == 1
    # the slow downgrade took its 12 s
    assert value(m2, "aperag_operator_migration_duration_seconds_sum", action="downgrade", outcome="succeeded") >= 10
    assert value(m2, "aperag_operator_resource_degraded", namespace=ns, name="rag", reason="MigrationFailed") == 1
    stopped = {"namespace": ns, "name": "rag", "phase": "Failed", "operation": "Upgrade", "reason": "MigrationFailed"}
    assert value(m2, "aperag_operator_resource_upgrade_stopped", **stopped) == 1
    # 0.6.0 serves, but Ready is False while the failure stands (Degraded reason MigrationFailed)
    assert value(m2, "aperag_operator_resource_ready", namespace=ns, name="rag") == 0

    # Paused: Suspended.
    cluster.kubectl("annotate", "-n", ns, "aperag/rag", "aperag.io/paused=true")
    paused = await capture(cluster, ns, "rag", lambda o: cond_of(o, "Paused") == "True", "Paused")
    rec.check(group, kind, "paused", paused, "Suspended")
    await wait_until(lambda: value(scrape(op), "aperag_operator_resource_paused", namespace=ns, name="rag") == 1,
                     timeout=10, what="paused in the metrics")  # fmt: skip
    cluster.kubectl("annotate", "-n", ns, "aperag/rag", "aperag.io/paused-")
    await capture(cluster, ns, "rag", lambda o: cond_of(o, "Paused") == "False", "resumed")

    # A change the operator has not observed yet (it is stopped): Progressing.
    # (a label kept in podLabels: server-side apply would turn a map emptied of all its keys into null)
    apply(cluster, ns, "rag", upgrade_spec("0.6.0", upgrade=report("upgrade", [REV2], [REV2]), slow=("downgrade",)))

    def recovered(o: dict[str, Any]) -> bool:
        return bool(o["status"]["observedGeneration"] == o["metadata"]["generation"]
                    and cond_of(o, "Degraded") == "False")  # fmt: skip

    await capture(cluster, ns, "rag", recovered, "0.6.0 asked again: no longer degraded")
    op.stop()
    scale = '{"spec": {"components": {"api": {"replicas": 2}}}}'
    cluster.kubectl("patch", "-n", ns, "aperag/rag", "--type=merge", "-p", scale)
    lagging = aperag(cluster, ns, "rag") or {}
    assert lagging["metadata"]["generation"] > lagging["status"]["observedGeneration"]
    rec.check(group, kind, "generation-not-observed", lagging, "Progressing")
    op = start_operator(cluster, tmp_path / "operator-2.log", "--namespace", ns)
    try:
        await wait_until(op.synced, timeout=60, what="restarted operator synced")
        await capture(cluster, ns, "rag", lambda o: cond_of(o, "Ready") == "True"
                      and o["status"]["observedGeneration"] == o["metadata"]["generation"], "Ready again")  # fmt: skip

        # A Secret the spec references is missing: Degraded, naming it.
        apply_yaml(cluster, manifest("nokeys", ns, {"app": {"apiKeysSecret": {"name": "missing", "key": "keys"}}}))
        missing = await capture(cluster, ns, "nokeys", lambda o: cond_of(o, "Degraded") == "True", "SecretNotFound")
        assert "Secret missing" in rec.check(group, kind, "secret-missing", missing, "Degraded")["message"]
        assert value(scrape(op), "aperag_operator_resource_degraded", namespace=ns, name="nokeys",
                     reason="SecretNotFound") == 1  # fmt: skip

        # The API server fails every ConfigMap write (a webhook nobody serves): apply errors by kind, failed
        # reconciles, and Degraded ApplyFailed.
        before = scrape(op)
        webhook = deny_configmaps(cluster, ns)
        try:
            cluster.kubectl("patch", "-n", ns, "aperag/rag", "--type=merge", "-p",
                            '{"spec": {"app": {"config": {"EXTRA": "1"}}}}')  # fmt: skip
            refused = await capture(cluster, ns, "rag", lambda o: (cond_of(o, "Degraded", "reason") == "ApplyFailed"),
                                    "ApplyFailed")  # fmt: skip
            rec.check(group, kind, "apply-failed", refused, "Degraded")
            after = scrape(op)
            assert total(after, "aperag_operator_apply_errors_total", kind="ConfigMap", reason="ServerError") >= 1
            assert total(before, "aperag_operator_apply_errors_total", kind="ConfigMap") == 0
            # The failed reconcile is counted when it ends, after it wrote the status: wait for it.
            errors = "aperag_operator_reconciles_total"
            await wait_until(lambda: value(scrape(op), errors, result="error") > value(before, errors, result="error"),
                             timeout=30, what="the failed reconcile counted")  # fmt: skip
        finally:
            cluster.kubectl("delete", "validatingwebhookconfiguration", webhook, "--ignore-not-found")

        # KubeBlocks Clusters, as the simulator reports them (the shape of the real CRD's status).
        group, kind = "apps.kubeblocks.io", "Cluster"
        rec.check(group, kind, "running", kget(cluster, ns, "clusters.apps.kubeblocks.io", "rag-pg"), "Healthy")
        for phase, health in (("Creating", "Progressing"), ("Updating", "Progressing"), ("Abnormal", "Degraded"),
                              ("Failed", "Degraded"), ("Stopped", "Suspended")):  # fmt: skip
            cluster.kubectl("annotate", "--overwrite", "-n", ns, "clusters.apps.kubeblocks.io/rag-redis",
                            f"sim.kubeblocks.io/phase={phase}")  # fmt: skip
            obj = await wait_until(lambda p=phase: cluster_in(cluster, ns, "rag-redis", p), timeout=30, what=phase)
            rec.check(group, kind, phase.lower(), obj, health)
        cluster.kubectl("annotate", "--overwrite", "-n", ns, "clusters.apps.kubeblocks.io/rag-pg",
                        "sim.kubeblocks.io/observe=false")  # fmt: skip
        cluster.kubectl("patch", "-n", ns, "clusters.apps.kubeblocks.io/rag-pg", "--type=merge", "-p",
                        '{"spec": {"terminationPolicy": "Delete"}}')  # fmt: skip
        lag = kget(cluster, ns, "clusters.apps.kubeblocks.io", "rag-pg") or {}
        assert lag["metadata"]["generation"] > lag["status"]["observedGeneration"]
        rec.check(group, kind, "generation-not-observed", lag, "Progressing")
    finally:
        op.stop()
    if UPDATE:
        rec.write()


def cond_of(obj: dict[str, Any], ctype: str, field: str = "status") -> str:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return str(c.get(field, ""))
    return ""


def cluster_in(cluster: Cluster, ns: str, name: str, phase: str) -> dict[str, Any] | None:
    obj = kget(cluster, ns, "clusters.apps.kubeblocks.io", name)
    return obj if obj is not None and (obj.get("status") or {}).get("phase") == phase else None


def deny_configmaps(cluster: Cluster, ns: str) -> str:
    """A webhook nobody serves: every ConfigMap write in ``ns`` fails with a 500."""
    webhook = f"deny-configmaps-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("label", "namespace", ns, f"aperag-test-webhook={webhook}")
    apply_yaml(cluster, json.dumps({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": webhook},
        "webhooks": [{
            "name": "configmaps.aperag-test.local", "clientConfig": {"url": "https://127.0.0.1:1/validate"},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                       "resources": ["configmaps"]}],
            "namespaceSelector": {"matchLabels": {"aperag-test-webhook": webhook}},
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"], "timeoutSeconds": 1,
        }],
    }))  # fmt: skip
    return webhook

