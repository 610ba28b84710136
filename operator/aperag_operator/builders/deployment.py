"""Deployments ``<name>-api``, ``-worker``, ``-beat``, ``-frontend`` and ``-flower``.

Every pod satisfies the ``restricted`` Pod Security Standard: non-root, seccomp RuntimeDefault, all
capabilities dropped, no privilege escalation, read-only root filesystem with emptyDirs where the
processes write. No hostPath and no required pod affinity: api and workers share objects through the
ReadWriteMany PVC (or S3), and pods only *prefer* to spread over nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aperag_operator.builders import configmap, pvc, service
from aperag_operator.builders.common import (
    API_PORT,
    CONFIG_HASH_ANNOTATION,
    CONTAINER_SECURITY_CONTEXT,
    FLOWER_PORT,
    FRONTEND_PORT,
    HEALTH_PORT,
    POD_SECURITY_CONTEXT,
    Instance,
    Obj,
    child_name,
    content_hash,
    finalize,
    labels,
    metadata,
    selector_labels,
)
from aperag_operator.spec.model import ResourceRequirements, WorkloadSpec

APP_COMPONENTS = ("api", "worker", "beat", "flower")
#: Components that read and write uploaded documents.
OBJECT_COMPONENTS = ("api", "worker")

COMMANDS: dict[str, list[str]] = {
    "api": ["aperag", "serve"],
    "worker": ["aperag", "worker"],
    "beat": ["aperag", "beat"],
    "flower": ["celery", "--app", "aperag.ingest.celery_app:celery_app", "flower", "--port=5555"],
}

DEFAULT_RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    "api": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
    "worker": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
    "beat": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
    "frontend": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
    "flower": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
}

#: Writable directories (emptyDirs) under the read-only root filesystem, per component.
WRITABLE_DIRS: dict[str, list[str]] = {
    "api": ["/tmp"],
    "worker": ["/tmp"],
    "beat": ["/tmp"],
    "flower": ["/tmp"],
    "frontend": ["/tmp", "/var/cache/nginx", "/var/run"],
}


def name(inst: Instance, component: str) -> str:
    return child_name(inst, component)


def component_spec(inst: Instance, component: str) -> WorkloadSpec:
    spec: WorkloadSpec = getattr(inst.spec.components, component)
    return spec


def enabled(inst: Instance, component: str) -> bool:
    return bool(getattr(component_spec(inst, component), "enabled", True))


def enabled_components(inst: Instance) -> list[str]:
    return [c for c in ("api", "worker", "beat", "frontend", "flower") if enabled(inst, c)]


def image(inst: Instance, component: str) -> str:
    override = component_spec(inst, component).image
    if override:
        return override
    repo = inst.spec.image.frontend_repository if component == "frontend" else inst.spec.image.repository
    return f"{repo}:{inst.image_tag}"


def resources(component: str, spec: ResourceRequirements | None) -> Obj:
    """The component's default requests/limits, overridden key by key by the spec."""
    out: dict[str, dict[str, Any]] = {k: dict(v) for k, v in DEFAULT_RESOURCES[component].items()}
    if spec is not None:
        for part in ("requests", "limits"):
            given = getattr(spec, part)
            if given is not None:
                out.setdefault(part, {}).update(given.model_dump(by_alias=True, exclude_none=True))
    return {part: {k: str(v) for k, v in values.items()} for part, values in out.items()}


def operator_env(inst: Instance, component: str) -> list[Obj]:
    """Variables the operator sets on every app container (before the database env and the user's env)."""
    env: list[Obj] = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "APERAG_COMPONENT", "value": component},
    ]
    storage = inst.spec.object_storage
    if storage.type == "s3" and storage.s3 is not None:
        creds = storage.s3.credentials_secret
        env += [
            {
                "name": "OBJECT_STORE_S3_ACCESS_KEY",
                "valueFrom": {"secretKeyRef": {"name": creds.name, "key": creds.access_key_id_key}},
            },
            {
                "name": "OBJECT_STORE_S3_SECRET_KEY",
                "valueFrom": {"secretKeyRef": {"name": creds.name, "key": creds.secret_access_key_key}},
            },
        ]
    keys = inst.spec.app.api_keys_secret
    if keys is not None and component == "api":
        env.append(
            {"name": "APERAG_API_KEYS", "valueFrom": {"secretKeyRef": {"name": keys.name, "key": keys.key}}}
        )
    if component == "worker":
        env.append(
            {"name": "WORKER_CONCURRENCY", "value": str(inst.spec.components.worker.concurrency)}
        )
    return env


def app_env(inst: Instance, component: str, database_env: Sequence[Obj] = ()) -> list[Obj]:
    """The env of an app container: operator settings, then ``database_env`` (the databases seam: the
    connection variables of managed or external databases), then ``spec.app.env``. Later entries with
    the same name replace earlier ones, so the user always wins; names stay unique (server-side apply
    keys env by name)."""
    merged: dict[str, Obj] = {}
    user = [e.model_dump(by_alias=True, exclude_none=True) for e in inst.spec.app.env]
    for item in [*operator_env(inst, component), *database_env, *user]:
        merged.pop(item["name"], None)
        merged[item["name"]] = item
    return list(merged.values())


def _volumes(inst: Instance, component: str) -> tuple[list[Obj], list[Obj]]:
    volumes: list[Obj] = []
    mounts: list[Obj] = []
    for index, path in enumerate(WRITABLE_DIRS[component]):
        vol = "tmp" if index == 0 else f"scratch-{index}"
        volumes.append({"name": vol, "emptyDir": {"sizeLimit": "1Gi"}})
        mounts.append({"name": vol, "mountPath": path})
    if component in OBJECT_COMPONENTS and pvc.wanted(inst):
        volumes.append({"name": "objects", "persistentVolumeClaim": {"claimName": pvc.name(inst)}})
        mounts.append({"name": "objects", "mountPath": inst.spec.object_storage.local.mount_path})
    return volumes, mounts


def _http_probe(path: str, period: int, failures: int, initial: int = 0) -> Obj:
    probe: Obj = {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }
    if initial:
        probe["initialDelaySeconds"] = initial
    return probe


def _probes(component: str) -> Obj:
    if component == "api":
        return {
            "startupProbe": _http_probe("/health/live", 5, 60),
            "livenessProbe": _http_probe("/health/live", 10, 3),
            "readinessProbe": _http_probe("/health/ready", 5, 3),
        }
    if component in ("frontend", "flower"):
        return {"livenessProbe": _http_probe("/", 10, 3), "readinessProbe": _http_probe("/", 5, 3)}
    # worker and beat: the app's health server (HEALTH_PORT); ready = broker (and database) reachable.
    return {
        "startupProbe": _http_probe("/health/live", 5, 60),
        "livenessProbe": _http_probe("/health/live", 10, 3),
        "readinessProbe": _http_probe("/health/ready", 10, 3),
    }


def _ports(component: str) -> list[Obj]:
    port = {"api": API_PORT, "frontend": FRONTEND_PORT, "flower": FLOWER_PORT}.get(component, HEALTH_PORT)
    return [{"name": "http", "containerPort": port, "protocol": "TCP"}]


def _affinity(inst: Instance, component: str, spec: WorkloadSpec) -> Obj | None:
    if spec.affinity is not None:
        affinity: Obj = spec.affinity.model_dump(by_alias=True, exclude_none=True)
        return affinity
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": selector_labels(inst, component)},
                    },
                }
            ]
        }
    }


def container(inst: Instance, component: str, database_env: Sequence[Obj] = ()) -> Obj:
    spec = component_spec(inst, component)
    _, mounts = _volumes(inst, component)
    main: Obj = {
        "name": component,
        "image": image(inst, component),
        "imagePullPolicy": inst.spec.image.pull_policy,
        "ports": _ports(component),
        "resources": resources(component, spec.resources),
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
        "volumeMounts": mounts,
        **_probes(component),
    }
    if component in APP_COMPONENTS:
        main["command"] = COMMANDS[component]
        main["env"] = app_env(inst, component, database_env)
        env_from = [{"configMapRef": {"name": configmap.name(inst)}}]
        env_from += [e.model_dump(by_alias=True, exclude_none=True) for e in inst.spec.app.env_from]
        main["envFrom"] = env_from
    else:
        main["env"] = [
            {"name": "APERAG_API_URL", "value": f"http://{service.name(inst, 'api')}:{API_PORT}"},
        ]
    return main


def build(inst: Instance, component: str, database_env: Sequence[Obj] = (), config_hash: str = "") -> Obj:
    """One component's Deployment. ``database_env`` is the databases seam (see :func:`app_env`);
    ``config_hash`` (of the ConfigMap data) goes on the pod template so config changes roll the pods."""
    spec = component_spec(inst, component)
    volumes, _ = _volumes(inst, component)
    pod_labels = {**spec.pod_labels, **labels(inst, component)}
    pod_annotations = dict(spec.pod_annotations)
    if component in APP_COMPONENTS and config_hash:
        pod_annotations[CONFIG_HASH_ANNOTATION] = config_hash
    if component == "beat":
        strategy: Obj = {"type": "Recreate"}
    else:
        strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}
    pod_spec: Obj = {
        "serviceAccountName": child_name(inst),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": dict(POD_SECURITY_CONTEXT),
        "terminationGracePeriodSeconds": 120 if component == "worker" else 30,
        "imagePullSecrets": [{"name": s} for s in inst.spec.image.pull_secrets],
        "nodeSelector": dict(spec.node_selector),
        "tolerations": [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations],
        "affinity": _affinity(inst, component, spec),
        "containers": [container(inst, component, database_env)],
        "volumes": volumes,
    }
    return finalize(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(inst, name(inst, component), component),
            "spec": {
                "replicas": 1 if component == "beat" else spec.replicas,
                "revisionHistoryLimit": 5,
                "selector": {"matchLabels": selector_labels(inst, component)},
                "strategy": strategy,
                "template": {
                    "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                    "spec": pod_spec,
                },
            },
        }
    )


def config_hash(inst: Instance) -> str:
    return content_hash(configmap.settings(inst))
