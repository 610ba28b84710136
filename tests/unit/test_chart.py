"""The Helm chart (charts/aperag-operator) rendered by the real helm (the one the control plane builds):
lint, what each value does to the objects and to the operator's flags, the schema, the CRD and RBAC
kept in one place each, and manifests/install.yaml up to date. Installing it: tests/e2e/test_chart.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from aperag_operator import cli, kinds

from charts import render
from images.build import image_ref, project_version

ROOT = Path(__file__).resolve().parents[2]
CHART = render.CHART
RULES_FILE = CHART / "files" / "rbac-rules.yaml"
RBAC_GROUP = "rbac.authorization.k8s.io"


def docs(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def rendered(*args: str, namespace: str = "aperag-system", release: str = "aperag-operator") -> list[dict[str, Any]]:
    return docs(render.template(*args, release=release, namespace=namespace))


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} rendered"
    return found[0]


def helm_fails(*args: str) -> str:
    """The error of a ``helm template`` that must fail."""
    result = render.helm("template", "r", str(CHART), *args, check=False)
    assert result.returncode != 0, f"helm template {' '.join(args)} rendered:\n{result.stdout[:2000]}"
    return result.stderr


def rules() -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = yaml.safe_load(RULES_FILE.read_text())
    return loaded


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = only(objects, "Deployment")
    (result,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(result)


@pytest.mark.parametrize(
    "values",
    [
        (),
        ("--set", "watchNamespaces={team-a,team-b}", "--set", "createNamespace=true"),
        ("--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true"),
    ],
    ids=["defaults", "watch-namespaces", "monitoring"],
)
def test_helm_lint_passes(values: tuple[str, ...]) -> None:
    result = render.helm("lint", "--strict", str(CHART), *values, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_the_chart_crd_is_the_generated_crd() -> None:
    chart_crd = CHART / "crds" / "aperag.io_aperags.yaml"
    assert chart_crd.read_bytes() == (ROOT / "crds" / "aperag.io_aperags.yaml").read_bytes(), (
        "charts/aperag-operator/crds/ differs from crds/: run `make crds`"
    )


def test_install_manifest_is_up_to_date() -> None:
    assert render.INSTALL_MANIFEST.read_text() == render.render_install_manifest(), (
        "manifests/install.yaml is out of date: run `make manifests`"
    )


def test_install_manifest_holds_crd_namespace_and_operator() -> None:
    objects = docs(render.INSTALL_MANIFEST.read_text())
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("CustomResourceDefinition", "aperags.aperag.io"),
        ("Namespace", "aperag-system"),
        ("ServiceAccount", "aperag-operator"),
        ("ClusterRole", "aperag-operator"),
        ("ClusterRoleBinding", "aperag-operator"),
        ("Service", "aperag-operator-metrics"),
        ("Deployment", "aperag-operator"),
    ]  # in the order kubectl applies them: the CRD and the Namespace first
    namespace = objects[1]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(o["metadata"].get("namespace") == "aperag-system" for o in objects[2:] if "Cluster" not in o["kind"])


def test_app_version_is_the_operator_version_and_the_default_image_is_the_one_make_images_builds() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == project_version()
    assert container(rendered())["image"] == image_ref("operator")
    tagged = container(rendered("--set", "image.tag=1.2.3"))["image"]
    assert tagged == "registry.example.com/aperag/aperag-operator:1.2.3"
    digest = "sha256:" + "a" * 64
    image = container(rendered("--set", "image.repository=ghcr.io/acme/op", "--set", f"image.digest={digest}"))
    assert image["image"] == f"ghcr.io/acme/op@{digest}"


def test_default_install_watches_every_namespace_with_a_cluster_role() -> None:
    objects = rendered(namespace="ops", release="rag")
    assert sorted(o["kind"] for o in objects) == [
        "ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount",
    ]  # fmt: skip
    assert all(o["metadata"]["name"].startswith("rag-aperag-operator") for o in objects)
    args = container(objects)["args"]
    assert args[:2] == ["run", "--all-namespaces"]
    parsed = cli.parse_args(args)  # the operator's own parser accepts the chart's arguments
    assert parsed.all_namespaces and parsed.namespace == [] and parsed.log_level == "info"
    role = only(objects, "ClusterRole")
    assert role["rules"] == rules()
    binding = only(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role["metadata"]["name"]}
    account = only(objects, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "ops"}]
    assert only(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_watch_namespaces_become_namespace_flags_and_roles_without_any_cluster_permission() -> None:
    objects = rendered("--set", "watchNamespaces={team-a,team-b}", namespace="ops", release="rag")
    kinds_rendered = sorted(o["kind"] for o in objects)
    assert "ClusterRole" not in kinds_rendered and "ClusterRoleBinding" not in kinds_rendered
    args = container(objects)["args"]
    assert "--all-namespaces" not in args
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]
    parsed = cli.parse_args(args)
    assert parsed.namespace == ["team-a", "team-b"] and not parsed.all_namespaces
    roles = {o["metadata"]["namespace"]: o for o in objects if o["kind"] == "Role"}
    bindings = {o["metadata"]["namespace"]: o for o in objects if o["kind"] == "RoleBinding"}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for ns in ("team-a", "team-b"):
        assert roles[ns]["rules"] == rules()
        role_ref = {"apiGroup": RBAC_GROUP, "kind": "Role", "name": roles[ns]["metadata"]["name"]}
        assert bindings[ns]["roleRef"] == role_ref
        subject = {"kind": "ServiceAccount", "name": "rag-aperag-operator", "namespace": "ops"}
        assert bindings[ns]["subjects"] == [subject]


def test_rbac_rules_use_no_wildcard_and_cover_every_kind_the_operator_knows() -> None:
    import aperag_operator.contributors  # noqa: F401  (contributors register their own kinds)

    for rule in rules():
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field] and all("*" not in item for item in rule[field]), rule
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no nonResourceURLs, no resourceNames

    def granted(group: str, resource: str) -> set[str]:
        verbs: set[str] = set()
        for rule in rules():
            if group in rule["apiGroups"] and resource in rule["resources"]:
                verbs |= set(rule["verbs"])
        return verbs

    for kind in kinds.KNOWN_KINDS.values():
        needed = {"create"} if kind is kinds.EVENT else {"get", "list", "watch"}
        assert needed <= granted(kind.group, kind.plural), f"no {sorted(needed)} on {kind} in {RULES_FILE}"
    assert granted("aperag.io", "aperags") == {"get", "list", "watch"}  # never the spec
    assert granted("aperag.io", "aperags/status") >= {"patch"}
    assert granted("", "secrets") == {"get", "list", "watch"}


def test_the_pod_meets_the_restricted_standard_and_probes_the_operators_own_endpoints() -> None:
    objects = rendered()
    deployment = only(objects, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    main = container(objects)
    assert main["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
    }  # fmt: skip
    assert main["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    # The probes hit the port and path the operator serves (--liveness URL; /readyz beside it).
    (port,) = main["ports"]
    liveness_arg = next(a for a in main["args"] if a.startswith("--liveness="))
    assert liveness_arg == f"--liveness=http://0.0.0.0:{port['containerPort']}/healthz"
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert main["resources"]["requests"] and main["resources"]["limits"]["memory"]
    # The metrics Service selects the operator's pod and targets that port.
    service = only(objects, "Service")
    labels = spec["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    metrics_port = {"name": "metrics", "port": 8080, "targetPort": port["name"], "protocol": "TCP"}
    assert service["spec"]["ports"] == [metrics_port]


def test_values_change_the_port_logging_and_arguments() -> None:
    objects = rendered(
        "--set", "healthPort=9090", "--set", "logLevel=debug", "--set", "logFormat=plain",
        "--set-json", 'extraArgs=["--workers=16","--resync-interval=120"]',
    )  # fmt: skip
    main = container(objects)
    parsed = cli.parse_args(main["args"])
    assert (parsed.liveness, parsed.log_level, parsed.log_format) == ("http://0.0.0.0:9090/healthz", "debug", "plain")
    assert (parsed.workers, parsed.resync_interval) == (16, 120.0)
    assert main["ports"][0]["containerPort"] == 9090


#: The chart's alerts; docs/observability.md has a runbook line for each (tests/unit/test_observability.py).
ALERTS = (
    "ApeRAGOperatorDown", "ApeRAGOperatorReconcileErrors", "ApeRAGNotReady", "ApeRAGMigrationFailed",
    "ApeRAGRollbackFailed", "ApeRAGRolledBack", "ApeRAGOperatorQueueBacklog",
)  # fmt: skip


def test_monitoring_objects_are_off_by_default_and_point_at_the_metrics_service() -> None:
    assert not {"ServiceMonitor", "PrometheusRule"} & {o["kind"] for o in rendered()}
    objects = rendered(
        "--set", "serviceMonitor.enabled=true", "--set", "serviceMonitor.labels.release=prom",
        "--set", "prometheusRule.enabled=true",
    )  # fmt: skip
    monitor = only(objects, "ServiceMonitor")
    service = only(objects, "Service")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["aperag-system"]}
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("metrics", "/metrics")]
    assert [e.get("honorLabels") for e in monitor["spec"]["endpoints"]] == [True]  # the ApeRAGs' namespace label
    rule = only(objects, "PrometheusRule")
    (group,) = rule["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert sorted(alerts) == sorted(ALERTS)
    # Operator down is about the metrics Service's targets (the ServiceMonitor's job is the Service's name).
    assert f'job="{service["metadata"]["name"]}"' in alerts["ApeRAGOperatorDown"]["expr"]
    for alert in alerts.values():
        assert alert["labels"]["severity"] in ("critical", "warning", "info")
        assert alert["annotations"]["summary"] and alert["annotations"]["runbook"]
        assert "runbook_url" not in alert["annotations"]
    extra = {"alert": "Custom", "expr": "vector(1)"}
    with_rule = rendered(
        "--set", "prometheusRule.enabled=true", "--set-json", f"prometheusRule.rules={json.dumps([extra])}",
        "--set", "prometheusRule.runbookUrl=https://docs.example.com/observability", "--set",
        "prometheusRule.notReadyFor=30m",
    )  # fmt: skip
    rules = only(with_rule, "PrometheusRule")["spec"]["groups"][0]["rules"]
    assert rules[-1] == extra and len(rules) == len(ALERTS) + 1
    by_name = {r.get("alert"): r for r in rules}
    assert by_name["ApeRAGNotReady"]["for"] == "30m"
    assert by_name["ApeRAGRollbackFailed"]["annotations"]["runbook_url"] == (
        "https://docs.example.com/observability#aperagrollbackfailed"
    )
    assert "needs metrics.service.enabled" in helm_fails(
        "--set", "serviceMonitor.enabled=true", "--set", "metrics.service.enabled=false"
    )


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("--set", "watchNamespaces=team-a"), "watchNamespaces"),  # a string, not a list
        (("--set", "watchNamespaces={Team_A}"), "watchNamespaces"),  # not a namespace name
        (("--set", "watchNamespaces={a,a}"), "watchNamespaces"),  # twice
        (("--set", "logLevel=verbose"), "logLevel"),
        (("--set", "replicas=2"), "replicas"),  # unknown value: there is always exactly one replica
        (("--set", "image.pullPolicy=Sometimes"), "pullPolicy"),
        (("--set", "image.digest=latest"), "digest"),
        (("--set-json", 'extraArgs=["-v"]'), "extraArgs"),
        (("--set", "healthPort=80"), "healthPort"),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, tuple) else value,
)
def test_the_values_schema_refuses_bad_values(args: tuple[str, ...], complaint: str) -> None:
    error = helm_fails(*args)
    assert "values don't meet the specifications of the schema" in error and complaint in error, error


def test_service_account_name_is_required_when_not_created() -> None:
    assert "serviceAccount.name is required" in helm_fails("--set", "serviceAccount.create=false")
    objects = rendered("--set", "serviceAccount.create=false", "--set", "serviceAccount.name=ops-sa")
    assert "ServiceAccount" not in {o["kind"] for o in objects}
    assert only(objects, "ClusterRoleBinding")["subjects"][0]["name"] == "ops-sa"


def test_the_namespace_is_only_rendered_when_asked() -> None:
    assert "Namespace" not in {o["kind"] for o in rendered()}
    namespace = only(rendered("--set", "createNamespace=true", namespace="ops"), "Namespace")
    assert namespace["metadata"]["name"] == "ops"

