"""The autoscalers: a KEDA ScaledObject (and its TriggerAuthentication) for the workers, autoscaling/v2
HorizontalPodAutoscalers for the API and, where KEDA is not installed, for the workers on CPU.

The workers scale on the Celery queue they consume: the Redis list ``celery`` (``aperag worker`` runs
``-Q celery``; docs/app.md), in the Redis database the app uses, at the address the app connects to.
Credentials come from the very Secret the app reads (a KubeBlocks account Secret for a managed Redis,
``credentialsSecretRef`` for an external one) through a TriggerAuthentication, so no password is ever
copied. KEDA itself runs elsewhere (its own namespace), so a managed Redis is addressed by its Service's
namespaced name.

KEDA scales between 0 and 1 itself and between 1 and maxReplicas through an HPA it creates
(``keda-hpa-<ScaledObject>``), whose scale-down behaviour comes from ``advanced.horizontalPodAutoscalerConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass

from aperag_operator.builders.common import Instance, Obj, finalize, metadata
from aperag_operator.builders.database_env import ACCOUNT_PASSWORD_KEY, ACCOUNT_USERNAME_KEY
from aperag_operator.builders.kubeblocks_cluster import ENGINES, account_secret_name, service_name
from aperag_operator.spec.model import ApeRAGSpec, ScaleDownSpec

SCALED_OBJECT_API_VERSION = "keda.sh/v1alpha1"
HPA_API_VERSION = "autoscaling/v2"
#: The Celery queue the workers consume (aperag.ingest.celery_app.QUEUE; a Redis list). The beat's
#: periodic task goes to a queue of its own, which is deliberately no trigger: it wakes no worker.
QUEUE = "celery"
#: kombu's Redis transport keeps the tasks the workers took and have not acknowledged yet (acks late:
#: until they finish, or until restored after a worker died) in this hash. A second trigger on it keeps
#: as many workers as the running tasks need: KEDA does not scale to zero, nor the HPA below the busy
#: workers, while tasks still run.
UNACKED = "unacked"
#: The app's Redis database setting (docs/app.md), default 0.
REDIS_DB_VAR = "REDIS_DB"
#: KEDA's HPA for a ScaledObject: ``keda-hpa-<ScaledObject name>`` (KEDA's default; not overridden, so it
#: never collides with the CPU HPA the operator makes for the workers without KEDA).
KEDA_HPA_PREFIX = "keda-hpa-"
TRIGGER_AUTHENTICATION_SUFFIX = "-worker-redis"
#: KEDA's fallback (workers while the queue cannot be read) starts after this many failed polls.
FALLBACK_FAILURE_THRESHOLD = 3
AUTOSCALED_COMPONENTS = ("api", "worker")


def scaled_object_name(inst: Instance) -> str:
    return f"{inst.name}-worker"


def keda_hpa_name(inst: Instance) -> str:
    return KEDA_HPA_PREFIX + scaled_object_name(inst)


def trigger_authentication_name(inst: Instance) -> str:
    return inst.name + TRIGGER_AUTHENTICATION_SUFFIX


def hpa_name(inst: Instance, component: str) -> str:
    return f"{inst.name}-{component}"


def autoscaled_components(spec: ApeRAGSpec) -> frozenset[str]:
    """The components whose replicas belong to an autoscaler (whatever the autoscaler turns out to be)."""
    return frozenset(c for c in AUTOSCALED_COMPONENTS if getattr(spec.autoscaling, c).enabled)


@dataclass(frozen=True)
class RedisTarget:
    """Where KEDA reads the queue: the address the app connects to, TLS, and the Secret keys of the
    credentials (None: no authentication)."""

    address: str
    tls: bool
    secret: str | None = None
    username_key: str | None = None
    password_key: str | None = None


def redis_target(inst: Instance) -> RedisTarget | None:
    """The app's Redis as KEDA must address it; None when the app reads a URL from a Secret (KEDA's redis
    scaler takes no URL; the CRD refuses that combination)."""
    redis = inst.spec.databases.redis
    if redis.managed is not None:
        # KEDA runs in another namespace: the Service's namespaced name resolves from anywhere.
        host = f"{service_name(inst.name, 'redis')}.{inst.namespace}.svc"
        return RedisTarget(
            address=f"{host}:{ENGINES['redis'].port}",
            tls=False,
            secret=account_secret_name(inst.name, "redis"),
            username_key=ACCOUNT_USERNAME_KEY,
            password_key=ACCOUNT_PASSWORD_KEY,
        )
    external = redis.external
    assert external is not None
    if external.host is None:
        return None
    creds = external.credentials_secret_ref
    return RedisTarget(
        address=f"{external.host}:{external.port}",
        tls=external.tls,
        secret=creds.name if creds else None,
        username_key=(creds.username_key or None) if creds else None,
        password_key=creds.password_key if creds else None,
    )


def queue_database_index(spec: ApeRAGSpec) -> int:
    """The Redis database of the queue: the spec's databaseIndex, else the app's REDIS_DB as the spec sets
    it (a literal spec.app.env value wins over spec.app.config, as in the containers), else 0."""
    explicit = spec.autoscaling.worker.database_index
    if explicit is not None:
        return explicit
    value: str | None = spec.app.config.get(REDIS_DB_VAR)
    for var in spec.app.env:
        if var.name == REDIS_DB_VAR:
            value = var.value  # None with valueFrom: not knowable here (set databaseIndex)
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def scale_down_behavior(scale_down: ScaleDownSpec) -> Obj:
    """``behavior.scaleDown`` of an HPA (policies only when asked; the smaller one wins)."""
    out: Obj = {"stabilizationWindowSeconds": scale_down.stabilization_window_seconds}
    policies: list[Obj] = []
    if scale_down.pods_per_period is not None:
        policies.append(
            {"type": "Pods", "value": scale_down.pods_per_period, "periodSeconds": scale_down.period_seconds}
        )
    if scale_down.percent_per_period is not None:
        policies.append(
            {"type": "Percent", "value": scale_down.percent_per_period, "periodSeconds": scale_down.period_seconds}
        )
    if policies:
        out["policies"] = policies
        out["selectPolicy"] = "Min"
    return out


def _target(inst: Instance, component: str) -> Obj:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{inst.name}-{component}"}


def trigger_authentication(inst: Instance, target: RedisTarget) -> Obj | None:
    """The Redis credentials for KEDA, from the Secret the app reads; None when Redis needs none."""
    if target.secret is None or target.password_key is None:
        return None
    refs = [{"parameter": "password", "name": target.secret, "key": target.password_key}]
    if target.username_key:
        refs.insert(0, {"parameter": "username", "name": target.secret, "key": target.username_key})
    return finalize(
        {
            "apiVersion": SCALED_OBJECT_API_VERSION,
            "kind": "TriggerAuthentication",
            "metadata": metadata(inst, trigger_authentication_name(inst), "worker"),
            "spec": {"secretTargetRef": refs},
        }
    )


def scaled_object(inst: Instance, target: RedisTarget) -> Obj:
    """The workers' ScaledObject: a redis trigger on the Celery queue."""
    spec = inst.spec.autoscaling.worker

    def trigger(name: str, key: str, per_worker: int, activation: int) -> Obj:
        body: Obj = {
            "type": "redis",
            "name": name,
            "metadata": {
                "address": target.address,
                "listName": key,
                "listLength": str(per_worker),
                "activationListLength": str(activation),
                "databaseIndex": str(queue_database_index(inst.spec)),
                "enableTLS": "true" if target.tls else "false",
            },
        }
        if target.secret is not None and target.password_key is not None:
            body["authenticationRef"] = {"name": trigger_authentication_name(inst)}
        return body

    triggers = [
        trigger("queued", QUEUE, spec.list_length, spec.activation_list_length),
        # Each worker pod runs `concurrency` tasks at once (prefetch 1, acks late).
        trigger("running", UNACKED, inst.spec.components.worker.concurrency, 0),
    ]
    body: Obj = {
        "scaleTargetRef": _target(inst, "worker"),
        "pollingInterval": spec.polling_interval,
        "cooldownPeriod": spec.cooldown_period,
        "minReplicaCount": spec.min_replicas,
        "maxReplicaCount": spec.max_replicas,
        "advanced": {
            # Deleting the ScaledObject (autoscaling turned off) leaves the replicas where they are; the
            # operator then applies spec.components.worker.replicas again.
            "restoreToOriginalReplicaCount": False,
            "horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": scale_down_behavior(spec.scale_down)}},
        },
        "triggers": triggers,
    }
    if spec.fallback_replicas is not None:
        body["fallback"] = {"failureThreshold": FALLBACK_FAILURE_THRESHOLD, "replicas": spec.fallback_replicas}
    return finalize(
        {
            "apiVersion": SCALED_OBJECT_API_VERSION,
            "kind": "ScaledObject",
            "metadata": metadata(inst, scaled_object_name(inst), "worker"),
            "spec": body,
        }
    )


def _utilization(resource: str, percent: int) -> Obj:
    target = {"type": "Utilization", "averageUtilization": percent}
    return {"type": "Resource", "resource": {"name": resource, "target": target}}


def hpa(inst: Instance, component: str) -> Obj:
    """An autoscaling/v2 HPA on CPU (and memory, for the API when asked): the API's, or the workers'
    when KEDA is not installed (never below one worker: an HPA cannot scale to zero)."""
    if component == "api":
        api = inst.spec.autoscaling.api
        low, high, scale_down = api.min_replicas, api.max_replicas, api.scale_down
        metrics = [_utilization("cpu", api.target_cpu_utilization)]
        if api.target_memory_utilization is not None:
            metrics.append(_utilization("memory", api.target_memory_utilization))
    else:
        worker = inst.spec.autoscaling.worker
        low, high, scale_down = max(1, worker.min_replicas), worker.max_replicas, worker.scale_down
        metrics = [_utilization("cpu", worker.target_cpu_utilization)]
    return finalize(
        {
            "apiVersion": HPA_API_VERSION,
            "kind": "HorizontalPodAutoscaler",
            "metadata": metadata(inst, hpa_name(inst, component), component),
            "spec": {
                "scaleTargetRef": _target(inst, component),
                "minReplicas": low,
                "maxReplicas": max(high, low),
                "metrics": metrics,
                "behavior": {"scaleDown": scale_down_behavior(scale_down)},
            },
        }
    )
