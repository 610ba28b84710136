"""Deployments ``<name>-api``, ``-worker``, ``-beat`` and ``-flower``: every one runs the app image (the
API also serves the web console; there is no separate frontend Deployment).

Every pod satisfies the ``restricted`` Pod Security Standard (see :mod:`.app_pod`, which the migration
Jobs share). No hostPath and no required pod affinity: api and workers share objects through the
ReadWriteMany PVC (or S3), and pods only *prefer* to spread over nodes.

The Deployments run ``inst.workload_release``: the spec's target, or another release while an upgrade
or a rollback is under way (its image and version label; everything else follows the spec).
"""

from __future__ import annotations

from collections.abc import Sequence

from aperag_operator.builders import configmap
from aperag_operator.builders.app_pod import (
    DEFAULT_RESOURCES,
    OBJECT_COMPONENTS,
    WRITABLE_DIRS,
    app_container,
    app_env,
    operator_env,
    pod_spec,
    resources,
)
from aperag_operator.builders.common import (
    API_PORT,
    CONFIG_HASH_ANNOTATION,
    FLOWER_PORT,
    HEALTH_PORT,
    Instance,
    Obj,
    Release,
    content_hash,
    finalize,
    labels,
    metadata,
    selector_labels,
)
from aperag_operator.spec.model import ApeRAGSpec, WorkloadSpec

__all__ = [
    "APP_COMPONENTS",
    "COMMANDS",
    "DEFAULT_RESOURCES",
    "OBJECT_COMPONENTS",
    "WRITABLE_DIRS",
    "app_env",
    "build",
    "config_hash",
    "container",
    "enabled",
    "enabled_components",
    "image",
    "operator_env",
    "release_image",
    "resources",
]

#: Every component runs the app image (with its own command).
APP_COMPONENTS = ("api", "worker", "beat", "flower")
COMPONENTS = APP_COMPONENTS

COMMANDS: dict[str, list[str]] = {
    "api": ["aperag", "serve"],
    "worker": ["aperag", "worker"],
    "beat": ["aperag", "beat"],
    "flower": ["celery", "--app", "aperag.ingest.celery_app:celery_app", "flower", "--port=5555"],
}


def name(inst: Instance, component: str) -> str:
    return f"{inst.name}-{component}"


def component_spec_of(spec: ApeRAGSpec, component: str) -> WorkloadSpec:
    workload: WorkloadSpec = getattr(spec.components, component)
    return workload


def component_spec(inst: Instance, component: str) -> WorkloadSpec:
    return component_spec_of(inst.spec, component)


def enabled_in(spec: ApeRAGSpec, component: str) -> bool:
    return bool(getattr(component_spec_of(spec, component), "enabled", True))


def enabled(inst: Instance, component: str) -> bool:
    return enabled_in(inst.spec, component)


def enabled_components_of(spec: ApeRAGSpec) -> list[str]:
    """The components whose Deployments the spec asks for."""
    return [c for c in COMPONENTS if enabled_in(spec, c)]


def enabled_components(inst: Instance) -> list[str]:
    return enabled_components_of(inst.spec)


def desired_replicas(spec: ApeRAGSpec, component: str) -> int:
    return 1 if component == "beat" else component_spec_of(spec, component).replicas


def release_image(spec: ApeRAGSpec, component: str, release: Release) -> str:
    """The image of ``component`` when the Deployments run ``release``: a component's own image override
    wins, else the release's app image."""
    return component_spec_of(spec, component).image or release.image


def image(inst: Instance, component: str) -> str:
    return release_image(inst.spec, component, inst.workload_release)


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
    if component == "flower":
        return {"livenessProbe": _http_probe("/", 10, 3), "readinessProbe": _http_probe("/", 5, 3)}
    # worker and beat: the app's health server (HEALTH_PORT); ready = broker (and database) reachable.
    return {
        "startupProbe": _http_probe("/health/live", 5, 60),
        "livenessProbe": _http_probe("/health/live", 10, 3),
        "readinessProbe": _http_probe("/health/ready", 10, 3),
    }


def _ports(component: str) -> list[Obj]:
    port = {"api": API_PORT, "flower": FLOWER_PORT}.get(component, HEALTH_PORT)
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
    main = app_container(inst, component, image(inst, component), database_env, spec.resources)
    main["command"] = COMMANDS[component]
    return {"name": component, **main, "ports": _ports(component), **_probes(component)}


def termination_grace_period(spec: ApeRAGSpec, component: str) -> int:
    """Seconds a stopped pod gets: a worker finishes its running tasks (Celery's warm shutdown)."""
    return spec.components.worker.termination_grace_period_seconds if component == "worker" else 30


def build(
    inst: Instance,
    component: str,
    database_env: Sequence[Obj] = (),
    config_hash: str = "",
    *,
    autoscaled: bool = False,
) -> Obj:
    """One component's Deployment, running ``inst.workload_release``. ``database_env`` is the databases
    seam (see :func:`.app_pod.app_env`); ``config_hash`` (of the ConfigMap data) goes on the pod
    template so config changes roll the pods. ``autoscaled``: an autoscaler owns the replicas, so the
    Deployment is built without ``spec.replicas`` (see ``Contribution.autoscaled``)."""
    spec = component_spec(inst, component)
    version = inst.workload_release.version
    pod_labels = {**spec.pod_labels, **labels(inst, component, version)}
    pod_annotations = dict(spec.pod_annotations)
    if config_hash:
        pod_annotations[CONFIG_HASH_ANNOTATION] = config_hash
    if component == "beat":
        strategy: Obj = {"type": "Recreate"}
    else:
        strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}
    pod: Obj = {
        **pod_spec(inst, component),
        "terminationGracePeriodSeconds": termination_grace_period(inst.spec, component),
        "nodeSelector": dict(spec.node_selector),
        "tolerations": [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations],
        "affinity": _affinity(inst, component, spec),
        "containers": [container(inst, component, database_env)],
    }
    return finalize(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(inst, name(inst, component), component, version),
            "spec": {
                "replicas": None if autoscaled else desired_replicas(inst.spec, component),
                "revisionHistoryLimit": 5,
                "selector": {"matchLabels": selector_labels(inst, component)},
                "strategy": strategy,
                "template": {
                    "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                    "spec": pod,
                },
            },
        }
    )


def config_hash(inst: Instance) -> str:
    return content_hash(configmap.settings(inst))
