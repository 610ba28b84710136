"""The Helm chart installed into the local cluster with the control plane's helm, and the operator run
as its Deployment says (tests/e2e/install.py): cluster-wide, its RBAC is enough to drive an ApeRAG to
Ready; with watchNamespaces its ServiceAccount cannot read a Secret anywhere else; upgrading the operator
(a new chart version with a new image tag and a changed value, or the manifest rendered from it) keeps
every ApeRAG running and writes nothing to what did not change."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from charts import render
from e2e.controlplane.localcluster import down, up
from tests.conftest import shared_dir
from tests.e2e.conftest import OperatorProcess, apply_yaml, kget, kubeblocks_simulator
from tests.e2e.install import (
    denied_lines,
    dump_log_on_failure,
    helm,
    rolled_out,
    service_account_kubeconfig,
    service_account_user,
    start_as_deployment,
    wait_probes_pass,
)
from tests.e2e.test_engine import EXTERNAL, RICH, install_secrets
from tests.e2e.test_operator_core import cond, manifest, wait_idle, wait_ready
from tests.harness.cluster import Cluster
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.operator]

PROMETHEUS_CRDS = "prometheus-operator-v0.93.0"


@pytest.fixture
def namespaces(cluster: Cluster) -> Iterator[list[str]]:
    """Makes more namespaces for a test (``namespaces.append``-style: call ``add``); deleted afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


async def new_namespace(cluster: Cluster, made: list[str], stem: str) -> str:
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "aperag.io/test=true")
    made.append(name)
    await wait_until(
        lambda: kget(cluster, name, "serviceaccount", "default") is not None, timeout=30, what=f"default SA in {name}"
    )
    return name


@contextlib.contextmanager
def helm_release(cluster: Cluster, release: str, namespace: str) -> Iterator[None]:
    """Uninstalls the release at the end (its ClusterRole and binding are cluster-wide)."""
    try:
        yield
    finally:
        helm(cluster, "uninstall", release, "-n", namespace, "--wait", "--timeout", "60s", check=False)


@contextlib.asynccontextmanager
async def running(
    cluster: Cluster, deployment: dict[str, Any], tmp_path: Path, log_name: str
) -> AsyncIterator[OperatorProcess]:
    """The operator with the Deployment's arguments and a token of its ServiceAccount, probes passing."""
    meta = deployment["metadata"]
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    kubeconfig = service_account_kubeconfig(cluster, meta["namespace"], account, tmp_path / f"{log_name}.kubeconfig")
    operator = start_as_deployment(cluster, deployment, tmp_path / f"{log_name}.log", kubeconfig)
    try:
        await wait_probes_pass(operator, deployment)
        yield operator
    except BaseException:
        dump_log_on_failure(operator)
        raise
    finally:
        operator.stop()


def release_name() -> str:
    return f"aperag-operator-{uuid.uuid4().hex[:6]}"  # contains the chart's name: objects are named after it


def ready(cluster: Cluster, namespace: str, name: str) -> bool:
    return cond(cluster, namespace, name, "Ready").get("status") == "True"


# --- cluster-wide ---------------------------------------------------------------------------------------------


async def test_the_chart_installs_and_its_rbac_is_enough_to_reach_ready(
    cluster: Cluster,
    namespace: str,
    namespaces: list[str],
    aperag_crd: str,
    upstream_crds: list[str],
    tmp_path: Path,
) -> None:
    # The operator's namespace enforces the restricted Pod Security Standard (as aperag-system does).
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    apps = await new_namespace(cluster, namespaces, "chart-apps")
    release = release_name()
    with helm_release(cluster, release, namespace):
        notes = helm(cluster, "install", release, str(render.CHART), "-n", namespace, "--wait", "--timeout", "120s")
        assert "It watches every namespace (--all-namespaces)" in notes
        deployment = await rolled_out(cluster, namespace, release)  # its pod was admitted
        # The metrics Service selects the operator's pod: the endpoint controller lists the pod's address.
        pods = (kget(cluster, namespace, "pods", "-l", f"app.kubernetes.io/instance={release}") or {})["items"]
        assert len(pods) == 1

        def endpoints() -> set[str]:
            slices = kget(cluster, namespace, "endpointslices", "-l", f"kubernetes.io/service-name={release}-metrics")
            items = (slices or {"items": []})["items"]
            return {a for s in items for e in s.get("endpoints") or [] for a in e["addresses"]}

        await wait_until(lambda: pods[0]["status"]["podIP"] in endpoints(), timeout=30, what="the metrics endpoint")

        async with running(cluster, deployment, tmp_path, "operator") as operator:
            body = {"ingress": {"enabled": True, "host": "rag.example.com"}, "networkPolicy": {"enabled": True}}
            with kubeblocks_simulator(cluster, apps) as errors:
                apply_yaml(cluster, manifest("chart", apps, body))
                await wait_ready(cluster, apps, "chart", limit=120)
            assert errors == []
            for kind, name in [
                ("clusters.apps.kubeblocks.io", "chart-pg"), ("ingress", "chart"), ("networkpolicy", "chart-app"),
                ("deployment", "chart-api"), ("poddisruptionbudget", "chart-api"),
            ]:  # fmt: skip
                assert kget(cluster, apps, kind, name) is not None, f"{kind}/{name} missing"
            assert not denied_lines(operator.logs())
            account = service_account_user(namespace, release)
            assert cluster.audit_events(username=account, namespace=apps), "the writes were not the ServiceAccount's"
    # Uninstalling removes the cluster-wide RBAC and keeps the CRD, so the ApeRAGs stay.
    assert cluster.kubectl("get", "clusterrole", release, check=False).returncode != 0
    assert kget(cluster, apps, "aperag", "chart") is not None


@pytest.mark.slow
def test_helm_installs_the_crd_on_a_fresh_cluster(tmp_path_factory: pytest.TempPathFactory) -> None:
    """On a cluster without the CRD (the session's cluster has it already), ``helm install`` creates it
    from the chart's crds/ and ApeRAGs are accepted; ``--create-namespace`` makes aperag-system."""
    state = tmp_path_factory.mktemp("fresh")
    own = Cluster(up(state))
    try:
        assert own.kubectl("get", "crd", "aperags.aperag.io", check=False).returncode != 0
        helm(own, "install", "aperag-operator", str(render.CHART), "--namespace", "aperag-system", "--create-namespace")
        own.wait_established("aperags.aperag.io")
        crd = kget(own, "", "crd", "aperags.aperag.io") or {}
        shipped = yaml.safe_load((render.CHART / "crds" / "aperag.io_aperags.yaml").read_text())
        assert crd["spec"]["versions"][0]["schema"] == shipped["spec"]["versions"][0]["schema"]
        result = own.kubectl(
            "apply", "--server-side", "--dry-run=server", "--validate=strict", "-n", "default",
            "-f", str(render.ROOT / "examples" / "aperag-minimal.yaml"),
        )  # fmt: skip
        assert "serverside-applied (server dry run)" in result.stdout
        assert kget(own, "aperag-system", "deployment", "aperag-operator") is not None
    finally:
        down(state)


async def test_prometheus_objects_are_valid_for_the_real_crds(
    cluster: Cluster, namespace: str, aperag_crd: str
) -> None:
    crds = shared_dir() / "fixtures" / "crds" / PROMETHEUS_CRDS
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=aperag-tests", "-f", str(crds))
    cluster.wait_established("servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com")
    rule = {"alert": "AperagTest", "expr": "vector(1) > 0", "for": "5m", "labels": {"severity": "info"}}
    values = (
        "--set", "serviceMonitor.enabled=true", "--set", "serviceMonitor.labels.release=prometheus",
        "--set", "prometheusRule.enabled=true",
    )  # fmt: skip
    for extra in ((), ("--set-json", f"prometheusRule.rules={json.dumps([rule])}")):
        text = render.template(*values, *extra, namespace=namespace, release=release_name())
        objects = [o for o in yaml.safe_load_all(text) if o and o["apiVersion"].startswith("monitoring.coreos.com")]
        assert sorted(o["kind"] for o in objects) == ["PrometheusRule", "ServiceMonitor"]
        # Strict: a field the CRD does not know is an error, not silently dropped.
        result = cluster.kubectl(
            "apply", "--server-side", "--dry-run=server", "--validate=strict", "-f", "-",
            input="\n---\n".join(json.dumps(o) for o in objects),
        )  # fmt: skip
        assert result.stdout.count("serverside-applied (server dry run)") == 2, result.stdout
    # And Helm installs them.
    release = release_name()
    with helm_release(cluster, release, namespace):
        helm(cluster, "install", release, str(render.CHART), "-n", namespace, *values, "--set", "rbac.create=false")
        assert kget(cluster, namespace, "servicemonitor", release) is not None
        assert kget(cluster, namespace, "prometheusrule", release) is not None


# --- watchNamespaces ------------------------------------------------------------------------------------------


async def test_watch_namespaces_confine_the_operator_and_its_service_account(
    cluster: Cluster,
    namespace: str,
    namespaces: list[str],
    aperag_crd: str,
    upstream_crds: list[str],
    tmp_path: Path,
) -> None:
    team_a = await new_namespace(cluster, namespaces, "team-a")
    team_b = await new_namespace(cluster, namespaces, "team-b")
    other = await new_namespace(cluster, namespaces, "other")
    for ns in (team_a, other):
        apply_yaml(cluster, json.dumps({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "llm", "namespace": ns},
            "stringData": {"apiKey": "sk-test"},
        }))  # fmt: skip
    release = release_name()
    with helm_release(cluster, release, namespace):
        notes = helm(
            cluster, "install", release, str(render.CHART), "-n", namespace,
            "--set", f"watchNamespaces={{{team_a},{team_b}}}", "--wait", "--timeout", "120s",
        )  # fmt: skip
        assert f"It watches the namespaces {team_a}, {team_b}" in notes
        assert cluster.kubectl("get", "clusterrole", release, check=False).returncode != 0
        deployment = await rolled_out(cluster, namespace, release)

        sa = service_account_kubeconfig(cluster, namespace, release, tmp_path / "sa.kubeconfig")

        def as_operator(*args: str) -> tuple[int, str]:
            result = cluster.kubectl(f"--kubeconfig={sa}", *args, check=False)
            return result.returncode, result.stderr

        # Inside its namespaces it reads Secrets; anywhere else the API server answers 403 Forbidden.
        assert as_operator("get", "secret", "llm", "-n", team_a) == (0, "")
        assert as_operator("get", "secrets", "-n", team_b)[0] == 0
        for args in (
            ("get", "secret", "llm", "-n", other),
            ("get", "secrets", "-n", other),
            ("get", "secrets", "--all-namespaces"),
            ("get", "secrets", "-n", namespace),  # not even in its own namespace: it does not watch it
            ("get", "aperags", "-n", other),
            ("get", "deployments", "--all-namespaces"),
        ):
            code, error = as_operator(*args, "-v=6")
            assert code != 0 and "403" in error and "Forbidden" in error, (args, error)

        async with running(cluster, deployment, tmp_path, "operator") as operator:
            with kubeblocks_simulator(cluster, team_a, other) as errors:
                apply_yaml(cluster, manifest("inside", team_a))
                apply_yaml(cluster, manifest("outside", other))
                await wait_ready(cluster, team_a, "inside", limit=120)
                await wait_idle(operator, team_a, "inside", cycles=2)  # resyncs every 2 s
            assert errors == []
            # The ApeRAG outside its namespaces is not touched: no status, no child, no Cluster.
            outside = kget(cluster, other, "aperag", "outside") or {}
            assert "status" not in outside
            children = (kget(cluster, other, "deployments,configmaps,clusters.apps.kubeblocks.io") or {})["items"]
            # kube-controller-manager publishes kube-root-ca.crt into every namespace, sooner or later.
            assert [c["metadata"]["name"] for c in children if c["metadata"]["name"] != "kube-root-ca.crt"] == []
            assert operator.reconciles(other, "outside") == 0
            assert not denied_lines(operator.logs())  # it never even tried outside
            account = service_account_user(namespace, release)
            assert cluster.audit_events(username=account, namespace=other) == []
            assert cluster.audit_events(username=account, namespace=team_a)  # its writes, where it may write


# --- upgrading the operator -----------------------------------------------------------------------------------


def next_chart_version(tmp_path: Path) -> Path:
    """A copy of the chart as the next release ships it: chart version and appVersion 0.2.0 (so the
    default image tag changes too)."""
    chart = tmp_path / "next" / "aperag-operator"
    shutil.copytree(render.CHART, chart)
    meta = chart / "Chart.yaml"
    text = meta.read_text()
    old = yaml.safe_load(text)
    text = text.replace(f"version: {old['version']}", "version: 0.2.0")
    text = text.replace(f'appVersion: "{old["appVersion"]}"', 'appVersion: "0.2.0"')
    meta.write_text(text)
    new = yaml.safe_load(text)
    assert (new["version"], new["appVersion"]) == ("0.2.0", "0.2.0")
    return chart


def snapshot(cluster: Cluster, namespace: str) -> dict[str, tuple[str, int | None]]:
    """(uid, generation) of every object the operator manages in the namespace, and of every pod."""
    managed = kget(
        cluster, namespace, "deployments,services,configmaps,serviceaccounts,pvc,pdb,ingress,networkpolicy,jobs,"
        "clusters.apps.kubeblocks.io", "-l", "app.kubernetes.io/managed-by=aperag-operator",
    )  # fmt: skip
    pods = kget(cluster, namespace, "pods")
    items = (managed or {"items": []})["items"] + (pods or {"items": []})["items"]
    return {
        f"{o['kind']}/{o['metadata']['name']}": (o["metadata"]["uid"], o["metadata"].get("generation")) for o in items
    }


async def all_idle(op: OperatorProcess, namespace: str, names: list[str], cycles: int) -> None:
    """Waits until the operator has finished ``cycles`` more reconciles of each resource (they run
    side by side: one wait for all)."""
    start = {name: op.reconciles(namespace, name) for name in names}
    await wait_until(
        lambda: all(op.reconciles(namespace, name) >= start[name] + cycles for name in names),
        timeout=30,
        what=f"{cycles} more reconciles of each of {names}",
    )


def ready_since(cluster: Cluster, namespace: str, names: list[str]) -> dict[str, str]:
    return {name: cond(cluster, namespace, name, "Ready")["lastTransitionTime"] for name in names}


@pytest.mark.parametrize("method", ["helm", "manifest"])
async def test_upgrading_the_operator_keeps_every_aperag_running_and_writes_nothing(
    method: str,
    cluster: Cluster,
    namespace: str,
    namespaces: list[str],
    aperag_crd: str,
    upstream_crds: list[str],
    tmp_path: Path,
) -> None:
    apps = await new_namespace(cluster, namespaces, "upgrade-apps")
    if method == "helm":
        release, system = release_name(), namespace
        cleanup: contextlib.AbstractContextManager[None] = helm_release(cluster, release, system)
    else:  # manifests/install.yaml, then the manifest rendered from the next chart version
        release, system = "aperag-operator", "aperag-system"
        cleanup = contextlib.nullcontext()
    next_chart = next_chart_version(tmp_path)
    with cleanup:
        if method == "helm":
            helm(cluster, "install", release, str(render.CHART), "-n", system, "--wait", "--timeout", "120s")
        else:
            cluster.kubectl("apply", "--server-side", "-f", str(render.INSTALL_MANIFEST))
        before = await rolled_out(cluster, system, release)
        assert before["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":0.1.0")
        names = ["min", "rich", "ext"]
        install_secrets(cluster, apps)
        with kubeblocks_simulator(cluster, apps) as errors:
            async with running(cluster, before, tmp_path, "before") as operator:
                apply_yaml(cluster, manifest("min", apps))
                apply_yaml(cluster, manifest("rich", apps, RICH))
                apply_yaml(cluster, manifest("ext", apps, EXTERNAL))
                for name in names:
                    await wait_ready(cluster, apps, name, limit=120)
                await all_idle(operator, apps, names, cycles=2)
                children, since_ready = snapshot(cluster, apps), ready_since(cluster, apps, names)
                assert {key.split("/")[0] for key in children} >= {
                    "Cluster", "ConfigMap", "Deployment", "Ingress", "Job", "NetworkPolicy", "PersistentVolumeClaim",
                    "Pod", "PodDisruptionBudget", "Service", "ServiceAccount",
                }  # fmt: skip

                # The next version: a new chart version (new default image tag) and a changed value.
                since = time.time()
                if method == "helm":
                    helm(
                        cluster, "upgrade", release, str(next_chart), "-n", system,
                        "--set", "resources.limits.memory=768Mi", "--wait", "--timeout", "120s",
                    )  # fmt: skip
                else:
                    rendered = render.template(
                        "--include-crds", "--set", "createNamespace=true", "--set", "resources.limits.memory=768Mi",
                        chart=next_chart,
                    )  # fmt: skip
                    cluster.kubectl("apply", "--server-side", "-f", "-", input=rendered)
                after = await rolled_out(cluster, system, release)
                # Recreate, as the kubelet would run it: the old operator stops before the new one starts.
            container = after["spec"]["template"]["spec"]["containers"][0]
            assert container["image"].endswith(":0.2.0") and container["resources"]["limits"]["memory"] == "768Mi"
            assert after["metadata"]["generation"] > before["metadata"]["generation"]
            operator_pods = kget(cluster, system, "pods", "-l", f"app.kubernetes.io/instance={release}") or {}
            assert [p["spec"]["containers"][0]["image"] for p in operator_pods["items"]] == [container["image"]]

            async with running(cluster, after, tmp_path, "after") as upgraded:
                await all_idle(upgraded, apps, names, cycles=3)  # full reconciles, resyncs included
                writes = [
                    f"{e['verb']} {e['objectRef'].get('resource')}/{e['objectRef'].get('name', '')}"
                    for e in cluster.audit_events(username=service_account_user(system, release), namespace=apps,
                                                  since=since)
                ]  # fmt: skip
                assert writes == []  # no apply, no status write, no Event
                # (the same query sees the installing operator's writes: the account and namespace are right)
                assert cluster.audit_events(username=service_account_user(system, release), namespace=apps)
                assert all(ready(cluster, apps, name) for name in names)
                assert ready_since(cluster, apps, names) == since_ready  # never left Ready
                assert snapshot(cluster, apps) == children  # nothing recreated, no spec changed, no pod restarted
                assert not denied_lines(upgraded.logs())
        assert errors == []
        if method == "manifest":  # back to the manifest as committed, for the next test in this cluster
            cluster.kubectl("apply", "--server-side", "-f", str(render.INSTALL_MANIFEST))
