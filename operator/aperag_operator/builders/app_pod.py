"""What every pod running the app image shares: the Deployments' pods (api, worker, beat, flower) and
the migration Jobs' pods get their environment, security settings and writable volumes from here, so a
migration runs against exactly the databases, settings and restrictions the app runs with.

Every such pod satisfies the ``restricted`` Pod Security Standard: non-root, seccomp RuntimeDefault, all
capabilities dropped, no privilege escalation, read-only root filesystem with emptyDirs where the
processes write.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aperag_operator.builders import configmap, pvc
from aperag_operator.builders.common import (
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    Instance,
    Obj,
    child_name,
)
from aperag_operator.spec.model import ResourceRequirements

#: Where a migration Job's app writes its JSON report (docs/app.md): the kubelet's default
#: terminationMessagePath, so the report becomes the container's termination message.
MIGRATION_REPORT_PATH = "/dev/termination-log"
MIGRATION_REPORT_ENV = "APERAG_MIGRATE_REPORT_FILE"

#: Components that read and write uploaded documents.
OBJECT_COMPONENTS = ("api", "worker")

DEFAULT_RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    "api": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
    "worker": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
    "beat": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
    "flower": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
    "migration": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
}

#: Writable directories (emptyDirs) under the read-only root filesystem, per component.
WRITABLE_DIRS: dict[str, list[str]] = {
    "api": ["/tmp"],
    "worker": ["/tmp"],
    "beat": ["/tmp"],
    "flower": ["/tmp"],
    "migration": ["/tmp"],
}


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
    if component == "api":
        # The API serves the web console (there is no frontend Deployment); spec.console turns it off.
        env.append({"name": "APERAG_CONSOLE_ENABLED", "value": "true" if inst.spec.console.enabled else "false"})
    if component == "worker":
        env.append(
            {"name": "WORKER_CONCURRENCY", "value": str(inst.spec.components.worker.concurrency)}
        )
    if component == "migration":
        env.append({"name": MIGRATION_REPORT_ENV, "value": MIGRATION_REPORT_PATH})
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


def app_env_from(inst: Instance) -> list[Obj]:
    """The ConfigMap of non-secret settings, then the user's envFrom sources."""
    env_from: list[Obj] = [{"configMapRef": {"name": configmap.name(inst)}}]
    env_from += [e.model_dump(by_alias=True, exclude_none=True) for e in inst.spec.app.env_from]
    return env_from


def volumes(inst: Instance, component: str) -> tuple[list[Obj], list[Obj]]:
    """(pod volumes, container mounts): the writable emptyDirs, and the shared objects volume for the
    components that read uploaded documents."""
    pod_volumes: list[Obj] = []
    mounts: list[Obj] = []
    for index, path in enumerate(WRITABLE_DIRS[component]):
        vol = "tmp" if index == 0 else f"scratch-{index}"
        pod_volumes.append({"name": vol, "emptyDir": {"sizeLimit": "1Gi"}})
        mounts.append({"name": vol, "mountPath": path})
    if component in OBJECT_COMPONENTS and pvc.wanted(inst):
        pod_volumes.append({"name": "objects", "persistentVolumeClaim": {"claimName": pvc.name(inst)}})
        mounts.append({"name": "objects", "mountPath": inst.spec.object_storage.local.mount_path})
    return pod_volumes, mounts


def app_container(
    inst: Instance,
    component: str,
    image: str,
    database_env: Sequence[Obj] = (),
    resource_spec: ResourceRequirements | None = None,
) -> Obj:
    """The container running the app image as ``component``: image, env (operator, databases, user),
    envFrom, restricted security context, resources and the writable mounts. Callers add the name,
    command, ports and probes."""
    _, mounts = volumes(inst, component)
    return {
        "image": image,
        "imagePullPolicy": inst.spec.image.pull_policy,
        "env": app_env(inst, component, database_env),
        "envFrom": app_env_from(inst),
        "resources": resources(component, resource_spec),
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
        "volumeMounts": mounts,
    }


def pod_spec(inst: Instance, component: str) -> Obj:
    """The pod-level settings every app pod shares: the instance's ServiceAccount without a token, no
    service links, the restricted pod security context, pull secrets and the writable volumes."""
    pod_volumes, _ = volumes(inst, component)
    return {
        "serviceAccountName": child_name(inst),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": dict(POD_SECURITY_CONTEXT),
        "imagePullSecrets": [{"name": s} for s in inst.spec.image.pull_secrets],
        "volumes": pod_volumes,
    }
