"""Builders: pure functions from spec to plain-dict objects (golden files plus targeted checks)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from aperag_operator.builders import deployment, ingress, network_policy, pvc, service_account
from aperag_operator.builders.children import desired_children
from aperag_operator.builders.common import SPEC_HASH_ANNOTATION
from aperag_operator.contributors import default_contributors
from aperag_operator.contributors.base import ordered
from aperag_operator.kinds import key
from aperag_operator.reconcile import decide

from .golden import assert_golden
from .helpers import instance
from .observed import StaticObserved

FULL_SPEC: dict[str, Any] = {
    "components": {
        "api": {"replicas": 3, "resources": {"requests": {"cpu": "1"}, "limits": {"memory": "3Gi"}}},
        "worker": {
            "nodeSelector": {"pool": "cpu"},
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
        },
        "flower": {"enabled": True},
    },
    "app": {
        "config": {"CHUNK_SIZE": "400"},
        "env": [{"name": "LLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "llm", "key": "apiKey"}}}],
        "envFrom": [{"secretRef": {"name": "extra"}}],
    },
    "objectStorage": {
        "type": "s3",
        "s3": {"bucket": "docs", "endpoint": "http://minio:9000", "credentialsSecret": {"name": "s3"}},
    },
    "ingress": {"enabled": True, "host": "rag.example.com", "tlsSecretName": "rag-tls", "className": "nginx"},
    "networkPolicy": {"enabled": True},
}


def all_desired(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every child one reconcile wants for ``spec``: the core children and every contributor's."""
    inst = instance(spec)
    body = {
        "metadata": {"name": inst.name, "namespace": inst.namespace, "uid": inst.uid, "generation": inst.generation},
        "spec": {"version": "0.5.0", **spec},
    }
    decision = decide(body, StaticObserved(), ordered(default_contributors()), lambda k: None, lambda i: [],
                      datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip
    return decision.plan.desired


@pytest.mark.parametrize("case,spec", [("minimal", {}), ("full", FULL_SPEC)])
def test_golden(case: str, spec: dict[str, Any]) -> None:
    """The whole desired set (core and contributed children) against a reviewed file."""
    assert_golden(case, all_desired(spec))


def test_names_labels_and_owner() -> None:
    objs = desired_children(instance())
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert ("Deployment", "demo-api") in names and ("Service", "demo-api") in names
    assert ("Deployment", "demo-beat") in names
    assert ("PodDisruptionBudget", "demo-api") in names and ("PodDisruptionBudget", "demo-worker") in names
    assert ("Ingress", "demo") not in names and ("Deployment", "demo-flower") not in names
    assert len({key(o) for o in objs}) == len(objs)
    for obj in objs:
        meta = obj["metadata"]
        assert meta["namespace"] == "team-a"
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "aperag"
        assert labels["app.kubernetes.io/instance"] == "demo"
        assert labels["app.kubernetes.io/managed-by"] == "aperag-operator"
        assert labels["app.kubernetes.io/part-of"] == "aperag"
        assert labels["app.kubernetes.io/version"] == "0.5.0"
        assert labels["app.kubernetes.io/component"]  # docs/api.md: every child says what it is
        ref = meta["ownerReferences"][0]
        assert ref["kind"] == "ApeRAG" and ref["controller"] is True and ref["uid"]
        assert SPEC_HASH_ANNOTATION in meta["annotations"]


def test_service_account_says_what_it_is() -> None:
    labels = service_account.build(instance())["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "service-account"


def test_documents_volume_is_retained_unless_asked_otherwise() -> None:
    kept = pvc.build(instance())
    assert "ownerReferences" not in kept["metadata"]
    assert kept["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "aperag-operator"
    owned = pvc.build(instance({"objectStorage": {"local": {"deletionPolicy": "Delete"}}}))
    assert owned["metadata"]["ownerReferences"][0]["kind"] == "ApeRAG"


def _pod(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("component", ["api", "worker", "beat", "flower"])
def test_restricted_pod_security(component: str) -> None:
    inst = instance({"components": {"flower": {"enabled": True}}})
    pod = _pod(deployment.build(inst, component))
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for vol in pod["volumes"]:
        assert "hostPath" not in vol
    affinity = pod.get("affinity", {})
    for kind in ("podAffinity", "podAntiAffinity"):
        assert "requiredDuringSchedulingIgnoredDuringExecution" not in affinity.get(kind, {})
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert "/tmp" in mounts
        if component in ("api", "flower"):
            assert "livenessProbe" in c and "readinessProbe" in c


def test_api_probes_use_health_endpoints() -> None:
    c = _pod(deployment.build(instance(), "api"))["containers"][0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["ports"][0]["containerPort"] == 8000
    assert c["command"] == ["aperag", "serve"]


def test_beat_is_recreate_with_one_replica() -> None:
    dep = deployment.build(instance(), "beat")
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert dep["spec"]["replicas"] == 1


def test_shared_volume_mounted_by_api_and_worker_only() -> None:
    inst = instance({"components": {"flower": {"enabled": True}}})
    assert pvc.build(inst)["spec"]["accessModes"] == ["ReadWriteMany"]
    for component, expect in (("api", True), ("worker", True), ("beat", False), ("flower", False)):
        vols = {v["name"] for v in _pod(deployment.build(inst, component))["volumes"]}
        assert ("objects" in vols) is expect, component
    s3 = instance(FULL_SPEC)
    assert not pvc.wanted(s3)
    env = {e["name"]: e for e in _pod(deployment.build(s3, "api"))["containers"][0]["env"]}
    assert env["OBJECT_STORE_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3"


def test_database_env_seam_and_user_env_wins() -> None:
    inst = instance({"app": {"env": [{"name": "POSTGRES_HOST", "value": "override"}]}})
    db_env = [{"name": "POSTGRES_HOST", "value": "pg"}, {"name": "POSTGRES_PORT", "value": "5432"}]
    env = deployment.app_env(inst, "api", db_env)
    names = [e["name"] for e in env]
    assert len(names) == len(set(names))
    by_name = {e["name"]: e for e in env}
    assert by_name["POSTGRES_HOST"]["value"] == "override"
    assert by_name["POSTGRES_PORT"]["value"] == "5432"
    dep = deployment.build(inst, "worker", db_env)
    assert {"name": "POSTGRES_PORT", "value": "5432"} in _pod(dep)["containers"][0]["env"]


def test_resource_defaults_are_overridden_key_by_key() -> None:
    inst = instance(FULL_SPEC)
    res = _pod(deployment.build(inst, "api"))["containers"][0]["resources"]
    assert res["requests"] == {"cpu": "1", "memory": "512Mi"}
    assert res["limits"] == {"memory": "3Gi"}


def test_config_change_rolls_pods() -> None:
    a = deployment.build(instance(), "api", config_hash=deployment.config_hash(instance()))
    other = instance({"app": {"config": {"CHUNK_SIZE": "100"}}})
    b = deployment.build(other, "api", config_hash=deployment.config_hash(other))
    ann = "aperag.io/config-hash"
    assert (
        a["spec"]["template"]["metadata"]["annotations"][ann] != b["spec"]["template"]["metadata"]["annotations"][ann]
    )


def test_ingress_and_network_policy() -> None:
    inst = instance(FULL_SPEC)
    ing = ingress.build(inst)
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["tls"] == [{"hosts": ["rag.example.com"], "secretName": "rag-tls"}]
    # The API serves everything (/api, /v1, /mcp, and the console at /console/ with / redirecting there):
    # one Prefix rule for / sends all of it to the API Service.
    (rule,) = ing["spec"]["rules"]
    assert rule["host"] == "rag.example.com"
    assert rule["http"]["paths"] == [
        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "demo-api", "port": {"number": 8000}}}}
    ]
    policies = network_policy.build(inst)
    assert [p["metadata"]["name"] for p in policies] == ["demo-app", "demo-web"]
    # Only the api accepts the ingress controller's traffic, on the API port only.
    web = policies[1]["spec"]
    assert web["podSelector"] == {
        "matchLabels": {
            "app.kubernetes.io/name": "aperag",
            "app.kubernetes.io/instance": "demo",
            "app.kubernetes.io/component": "api",
        }
    }
    (rule_in,) = web["ingress"]
    assert rule_in["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert rule_in["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]


def test_no_frontend_the_api_serves_the_console() -> None:
    """There is no frontend Deployment or Service: the API serves the web console (spec.console)."""
    objs = desired_children(instance({"components": {"flower": {"enabled": True}}}))
    components = {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in objs}
    assert "frontend" not in components
    assert {o["metadata"]["name"] for o in objs if o["kind"] in ("Deployment", "Service")} == {
        "demo-api", "demo-worker", "demo-beat", "demo-flower"}  # fmt: skip
    for o in objs:
        if o["kind"] == "Deployment":
            image = _pod(o)["containers"][0]["image"]
            assert image == "registry.example.com/aperag/aperag:0.5.0", o["metadata"]["name"]


@pytest.mark.parametrize("enabled, value", [(None, "true"), (True, "true"), (False, "false")])
def test_console_setting_reaches_the_api_container_only(enabled: bool | None, value: str) -> None:
    spec = {} if enabled is None else {"console": {"enabled": enabled}}
    inst = instance({**spec, "components": {"flower": {"enabled": True}}})
    for component in deployment.enabled_components(inst):
        env = {e["name"]: e for e in _pod(deployment.build(inst, component))["containers"][0]["env"]}
        if component == "api":
            assert env["APERAG_CONSOLE_ENABLED"] == {"name": "APERAG_CONSOLE_ENABLED", "value": value}
        else:
            assert "APERAG_CONSOLE_ENABLED" not in env, component


def test_resource_labels_are_never_copied() -> None:
    # The builders only see the spec: an instance label on the ApeRAG itself cannot leak.
    for obj in desired_children(instance(name="other")):
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "other"


def test_two_instances_do_not_collide() -> None:
    a = {key(o) for o in desired_children(instance(name="a"))}
    b = {key(o) for o in desired_children(instance(name="b"))}
    c = {key(o) for o in desired_children(instance(name="a", namespace="other"))}
    assert not a & b and not a & c
