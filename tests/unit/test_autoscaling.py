"""Autoscaling: the builders (golden files), the contributor's decisions (KEDA or the CPU fallback, the
switch, the roll-up of the autoscalers' conditions), the replicas handover and the live replicas the
status and the upgrade health gate count. Pure: the KEDA CRDs' own validation of these objects and the
handover against a real API server are in tests/e2e/test_autoscaling.py."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from aperag_operator.builders import autoscaling, deployment
from aperag_operator.builders.children import desired_children
from aperag_operator.builders.common import FIELD_MANAGER, Release
from aperag_operator.cache import KindState
from aperag_operator.contributors import default_contributors
from aperag_operator.contributors.autoscaling import AutoscalingContributor
from aperag_operator.contributors.base import Context, ordered
from aperag_operator.kinds import HORIZONTAL_POD_AUTOSCALER, SCALED_OBJECT, TRIGGER_AUTHENTICATION, key
from aperag_operator.reconcile import decide, plan, replicas_handover
from aperag_operator.spec.model import parse_spec
from aperag_operator.status import component_state
from aperag_operator.upgrade import observe_deployments
from pydantic import ValidationError

from .golden import assert_golden
from .helpers import instance
from .observed import StaticObserved

NOW = datetime(2026, 1, 1, tzinfo=UTC)

WORKER = {"enabled": True, "minReplicas": 0, "maxReplicas": 20, "listLength": 8, "pollingInterval": 10,
          "cooldownPeriod": 120, "fallbackReplicas": 2,
          "scaleDown": {"stabilizationWindowSeconds": 60, "podsPerPeriod": 2, "percentPerPeriod": 50}}  # fmt: skip
API = {"enabled": True, "minReplicas": 2, "maxReplicas": 6, "targetCpuUtilization": 70, "targetMemoryUtilization": 75}
EXTERNAL_TLS_REDIS = {
    "redis": {"external": {"host": "redis.example.internal", "port": 6380, "tls": True,
                           "credentialsSecretRef": {"name": "redis-creds", "usernameKey": ""}}}
}  # fmt: skip


def body(spec: dict[str, Any]) -> dict[str, Any]:
    inst = instance(spec)
    return {
        "metadata": {"name": inst.name, "namespace": inst.namespace, "uid": inst.uid, "generation": inst.generation},
        "spec": {"version": "0.5.0", **spec},
    }


def decision(spec: dict[str, Any], observed: StaticObserved | None = None, live: dict[Any, Any] | None = None) -> Any:
    live = live or {}
    return decide(body(spec), observed or StaticObserved(), ordered(default_contributors()), live.get,
                  lambda i: [], NOW)  # fmt: skip


def autoscaling_objects(result: Any) -> list[dict[str, Any]]:
    wanted = {"ScaledObject", "TriggerAuthentication", "HorizontalPodAutoscaler"}
    objs = [o for o in result.plan.desired if o["kind"] in wanted]
    objs += [o for o in result.plan.desired if o["kind"] == "Deployment" and o["metadata"]["name"] in
             ("demo-api", "demo-worker")]  # fmt: skip
    return objs


def contribute(spec: dict[str, Any], observed: StaticObserved) -> Any:
    inst = instance(spec)
    context = Context(instance=inst, annotations={}, status={}, paused=False, observed=observed, now=NOW)
    return AutoscalingContributor().contribute(context, {})


def without_keda() -> StaticObserved:
    return StaticObserved(states={SCALED_OBJECT.type_path: KindState.NOT_INSTALLED,
                                  TRIGGER_AUTHENTICATION.type_path: KindState.NOT_INSTALLED})  # fmt: skip


# --- golden --------------------------------------------------------------------------------------------


def test_golden_with_keda() -> None:
    """The ScaledObject (redis trigger on the managed Redis, credentials from its account Secret), the
    API's HPA on CPU and memory, and both Deployments without replicas."""
    assert_golden("autoscaling-keda", autoscaling_objects(decision({"autoscaling": {"worker": WORKER, "api": API}})))


def test_golden_with_keda_and_an_external_tls_redis() -> None:
    spec = {"autoscaling": {"worker": {"enabled": True}}, "databases": EXTERNAL_TLS_REDIS}
    assert_golden("autoscaling-keda-external", autoscaling_objects(decision(spec)))


def test_golden_without_keda() -> None:
    spec = {"autoscaling": {"worker": WORKER}}
    assert_golden("autoscaling-cpu", autoscaling_objects(decision(spec, without_keda())))


# --- what the objects say ------------------------------------------------------------------------------


def test_the_trigger_reads_the_queue_the_workers_consume_where_the_app_finds_it() -> None:
    inst = instance({"autoscaling": {"worker": WORKER}})
    target = autoscaling.redis_target(inst)
    assert target is not None
    scaled = autoscaling.scaled_object(inst, target)
    trigger, running = scaled["spec"]["triggers"]
    assert trigger["type"] == running["type"] == "redis"
    assert trigger["metadata"]["listName"] == "celery" == autoscaling.QUEUE
    assert (trigger["metadata"]["listLength"], trigger["metadata"]["activationListLength"]) == ("8", "0")
    # The running tasks: kombu's hash of unacknowledged tasks, `concurrency` per worker pod.
    assert running["metadata"]["listName"] == "unacked" and running["metadata"]["listLength"] == "2"
    assert running["metadata"]["address"] == trigger["metadata"]["address"]
    # KEDA runs in its own namespace: the managed Redis by its namespaced Service name.
    assert trigger["metadata"]["address"] == "demo-redis-redis-redis.team-a.svc:6379"
    assert trigger["metadata"]["enableTLS"] == "false"
    assert trigger["authenticationRef"] == {"name": "demo-worker-redis"}
    auth = autoscaling.trigger_authentication(inst, target)
    assert auth is not None
    # The very Secret and keys the app's REDIS_USER / REDIS_PASSWORD come from.
    env = {e["name"]: e for e in deployment.build(inst, "worker", decision({})
                                                   .contributions["databases"].env)["spec"]["template"]["spec"]
           ["containers"][0]["env"]}  # fmt: skip
    for ref in auth["spec"]["secretTargetRef"]:
        app_var = {"username": "REDIS_USER", "password": "REDIS_PASSWORD"}[ref["parameter"]]
        assert env[app_var]["valueFrom"]["secretKeyRef"] == {"name": ref["name"], "key": ref["key"]}
    assert scaled["spec"]["minReplicaCount"] == 0 and scaled["spec"]["maxReplicaCount"] == 20
    assert scaled["spec"]["fallback"] == {"failureThreshold": 3, "replicas": 2}
    assert scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"] == {
        "stabilizationWindowSeconds": 60,
        "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60},
                     {"type": "Percent", "value": 50, "periodSeconds": 60}],
        "selectPolicy": "Min",
    }  # fmt: skip


def test_an_external_redis_without_user_name_or_password() -> None:
    inst = instance({"autoscaling": {"worker": {"enabled": True}}, "databases": EXTERNAL_TLS_REDIS})
    target = autoscaling.redis_target(inst)
    assert target == autoscaling.RedisTarget("redis.example.internal:6380", True, "redis-creds", None, "password")
    auth = autoscaling.trigger_authentication(inst, target)
    assert auth is not None and [r["parameter"] for r in auth["spec"]["secretTargetRef"]] == ["password"]
    bare = instance({"autoscaling": {"worker": {"enabled": True}},
                     "databases": {"redis": {"external": {"host": "redis"}}}})  # fmt: skip
    bare_target = autoscaling.redis_target(bare)
    assert bare_target is not None and autoscaling.trigger_authentication(bare, bare_target) is None
    assert all("authenticationRef" not in t for t in autoscaling.scaled_object(bare, bare_target)["spec"]["triggers"])


@pytest.mark.parametrize(
    "app, explicit, expected",
    [
        ({}, None, 0),
        ({"config": {"REDIS_DB": "3"}}, None, 3),
        ({"config": {"REDIS_DB": "3"}, "env": [{"name": "REDIS_DB", "value": "5"}]}, None, 5),
        ({"config": {"REDIS_DB": "3"}}, 7, 7),
    ],
)
def test_the_database_index_is_the_apps(app: dict[str, Any], explicit: int | None, expected: int) -> None:
    worker: dict[str, Any] = {"enabled": True}
    if explicit is not None:
        worker["databaseIndex"] = explicit
    assert autoscaling.queue_database_index(parse_spec({"version": "1", "app": app,
                                                        "autoscaling": {"worker": worker}})) == expected  # fmt: skip


def test_bad_bounds_and_a_url_queue_are_refused() -> None:
    for worker in ({"minReplicas": 5, "maxReplicas": 2}, {"maxReplicas": 2, "fallbackReplicas": 3}):
        with pytest.raises(ValidationError, match="must be <= maxReplicas"):
            parse_spec({"version": "1", "autoscaling": {"worker": worker}})
    with pytest.raises(ValidationError, match="minReplicas must be <= maxReplicas"):
        parse_spec({"version": "1", "autoscaling": {"api": {"minReplicas": 5, "maxReplicas": 2}}})
    url = {"redis": {"external": {"urlSecretRef": {"name": "r", "key": "url"}}}}
    with pytest.raises(ValidationError, match="KEDA cannot read a connection URL"):
        parse_spec({"version": "1", "databases": url, "autoscaling": {"worker": {"enabled": True}}})
    parse_spec({"version": "1", "databases": url})  # without autoscaling the URL is fine


def test_the_worker_grace_period_covers_a_task_and_is_settable() -> None:
    pod = deployment.build(instance(), "worker")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 600
    longer = instance({"components": {"worker": {"terminationGracePeriodSeconds": 3600}}})
    assert deployment.build(longer, "worker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 3600
    assert deployment.build(instance(), "api")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 30


# --- the contributor ---------------------------------------------------------------------------------------


def condition(result: Any) -> dict[str, Any]:
    (cond,) = result.conditions
    return dict(cond)


def test_nothing_when_autoscaling_is_off() -> None:
    result = contribute({}, StaticObserved())
    assert result.children == () and result.autoscaled == frozenset() and result.conditions == ()


def test_without_keda_the_workers_scale_on_cpu_and_the_condition_says_why() -> None:
    result = contribute({"autoscaling": {"worker": WORKER}}, without_keda())
    assert [(o["kind"], o["metadata"]["name"]) for o in result.children] == [("HorizontalPodAutoscaler", "demo-worker")]
    hpa = result.children[0]["spec"]
    assert hpa["minReplicas"] == 1  # an HPA cannot scale to zero
    assert hpa["metrics"][0]["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}
    cond = condition(result)
    assert (cond["status"], cond["reason"]) == ("False", "KEDANotInstalled")
    assert "scaledobjects.keda.sh" in cond["message"] and "demo-worker" in cond["message"]
    assert result.autoscaled == frozenset({"worker"})
    assert result.status["autoscaling"]["worker"]["kind"] == "HorizontalPodAutoscaler"


def test_keda_forbidden_by_rbac_is_said_plainly() -> None:
    observed = StaticObserved(states={SCALED_OBJECT.type_path: KindState.FORBIDDEN})
    cond = condition(contribute({"autoscaling": {"worker": WORKER}}, observed))
    assert cond["reason"] == "KEDANotVisible" and "rbac-rules.yaml" in cond["message"]


def owned_cpu_hpa() -> dict[str, Any]:
    hpa = autoscaling.hpa(instance({"autoscaling": {"worker": WORKER}}), "worker")
    return copy.deepcopy(hpa)


def test_keda_installed_later_the_cpu_hpa_goes_first_then_the_scaled_object() -> None:
    spec = {"autoscaling": {"worker": WORKER}}
    switching = contribute(spec, StaticObserved().add(HORIZONTAL_POD_AUTOSCALER, owned_cpu_hpa()))
    assert switching.children == ()  # no ScaledObject while the CPU HPA exists, and the HPA no longer desired
    assert condition(switching)["reason"] == "SwitchingToKEDA"
    assert switching.requeue_after is not None
    # The engine prunes it (owned, of an owned kind, no longer desired) ...
    result = decision(spec, StaticObserved().add(HORIZONTAL_POD_AUTOSCALER, owned_cpu_hpa()))
    hpa_key = key(owned_cpu_hpa())
    assert plan(result.plan.desired, lambda k: None, [owned_cpu_hpa()], workloads_blocked=False).delete == [hpa_key]
    # ... and once it is gone the ScaledObject comes.
    after = contribute(spec, StaticObserved())
    assert [o["kind"] for o in after.children] == ["TriggerAuthentication", "ScaledObject"]


def scaled_object(conditions: list[dict[str, str]], hpa: str = "keda-hpa-demo-worker") -> dict[str, Any]:
    return {"metadata": {"name": "demo-worker"}, "status": {"conditions": conditions, "hpaName": hpa}}


def keda_hpa(conditions: list[dict[str, str]], current: int = 3, desired: int = 4) -> dict[str, Any]:
    return {"metadata": {"name": "keda-hpa-demo-worker"},
            "status": {"conditions": conditions, "currentReplicas": current, "desiredReplicas": desired}}  # fmt: skip


READY = [
    {"type": "Ready", "status": "True", "reason": "ScaledObjectReady", "message": "ScaledObject is defined correctly"},
    {"type": "Active", "status": "True", "reason": "ScalerActive", "message": "Scaling is performed"},
    {"type": "Fallback", "status": "False", "reason": "NoFallbackFound", "message": "No fallbacks are active"},
    {"type": "Paused", "status": "False", "reason": "ScaledObjectUnpaused", "message": "pause annotation removed"},
]
HPA_OK = [
    {"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"},
    {"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound"},
]


def with_condition(conditions: list[dict[str, str]], ctype: str, **values: str) -> list[dict[str, str]]:
    return [{**c, **values} if c["type"] == ctype else c for c in conditions]


@pytest.mark.parametrize(
    "so, hpa, ready, reason",
    [
        (None, None, "False", "ScaledObjectPending"),
        (READY, HPA_OK, "True", "AutoscalersReady"),
        (with_condition(READY, "Ready", status="False", reason="ScaledObjectCheckFailed", message="bad trigger"),
         None, "False", "ScaledObjectCheckFailed"),
        (with_condition(READY, "Fallback", status="True", reason="FallbackExists", message="redis down"),
         HPA_OK, "False", "ScalerFallback"),
        (with_condition(READY, "Paused", status="True", reason="ScaledObjectPaused", message="paused"),
         HPA_OK, "False", "ScaledObjectPaused"),
        (READY, with_condition(HPA_OK, "ScalingActive", status="False", reason="FailedGetExternalMetric",
                               message="unable to get external metric"), "False", "FailedGetExternalMetric"),
        # KEDA's HPA at zero replicas (KEDA scales from zero itself) is not a problem.
        (with_condition(READY, "Active", status="False"),
         with_condition(HPA_OK, "ScalingActive", status="False", reason="ScalingDisabled"), "True", "AutoscalersReady"),
    ],
)  # fmt: skip
def test_the_autoscalers_conditions_are_rolled_up(
    so: list[dict[str, str]] | None, hpa: list[dict[str, str]] | None, ready: str, reason: str
) -> None:
    observed = StaticObserved()
    if so is not None:
        observed.add(SCALED_OBJECT, scaled_object(so))
    if hpa is not None:
        observed.add(HORIZONTAL_POD_AUTOSCALER, keda_hpa(hpa))
    result = contribute({"autoscaling": {"worker": WORKER}}, observed)
    cond = condition(result)
    assert (cond["status"], cond["reason"]) == (ready, reason), cond
    worker = result.status["autoscaling"]["worker"]
    assert worker["kind"] == "ScaledObject" and worker["horizontalPodAutoscaler"] == "keda-hpa-demo-worker"
    assert [c["type"] for c in worker["conditions"]] == [c["type"] for c in so or []]
    if hpa is not None:
        assert (worker["currentReplicas"], worker["desiredReplicas"]) == (3, 4)
        assert [c["type"] for c in worker["hpaConditions"]] == ["AbleToScale", "ScalingActive"]
    assert all("lastTransitionTime" not in c for c in worker["conditions"])  # a stable status


def test_the_api_hpa_without_metrics_is_reported() -> None:
    failing = {"metadata": {"name": "demo-api"}, "status": {"currentReplicas": 2, "desiredReplicas": 2, "conditions": [
        {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale"},
        {"type": "ScalingActive", "status": "False", "reason": "FailedGetResourceMetric",
         "message": "failed to get cpu utilization: unable to get metrics for resource cpu"}]}}  # fmt: skip
    result = contribute({"autoscaling": {"api": API}}, StaticObserved().add(HORIZONTAL_POD_AUTOSCALER, failing))
    cond = condition(result)
    assert (cond["status"], cond["reason"]) == ("False", "FailedGetResourceMetric")
    assert cond["message"].startswith("api: HorizontalPodAutoscaler demo-api: failed to get cpu utilization")
    assert result.status["autoscaling"]["api"]["metric"] == "CPU 70% of requests, memory 75% of requests"


# --- replicas belong to the autoscaler --------------------------------------------------------------------


def test_autoscaled_deployments_are_built_without_replicas() -> None:
    result = decision({"autoscaling": {"worker": WORKER}})
    deployments = {o["metadata"]["name"]: o for o in result.plan.desired if o["kind"] == "Deployment"}
    assert "replicas" not in deployments["demo-worker"]["spec"]
    assert deployments["demo-api"]["spec"]["replicas"] == 2
    assert result.autoscaled == frozenset({"worker"})


def applied_by(manager: str, replicas: bool) -> list[dict[str, Any]]:
    fields: dict[str, Any] = {"f:spec": {"f:replicas": {}} if replicas else {"f:template": {}}}
    return [{"manager": manager, "operation": "Apply", "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
             "fieldsV1": fields}]  # fmt: skip


def live_worker(replicas: int, managed_fields: list[dict[str, Any]]) -> dict[str, Any]:
    obj = deployment.build(instance(), "worker")
    obj = copy.deepcopy(obj)
    obj["spec"]["replicas"] = replicas
    obj["metadata"]["managedFields"] = managed_fields
    obj["metadata"]["resourceVersion"] = "7"
    return obj


def test_replicas_are_handed_over_before_the_operator_lets_go_of_them() -> None:
    """The server-side apply trap: the operator's apply owns spec.replicas; applying the Deployment without
    it would reset it to 1. The current count is applied under a second manager first."""
    desired = deployment.build(instance({"autoscaling": {"worker": WORKER}}), "worker", autoscaled=True)
    owned_by_us = live_worker(4, applied_by(FIELD_MANAGER, replicas=True))
    assert replicas_handover(desired, owned_by_us) == {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "demo-worker", "namespace": "team-a"}, "spec": {"replicas": 4},
    }  # fmt: skip
    result = plan([desired], {key(desired): owned_by_us}.get, [], workloads_blocked=False)
    assert result.apply == [desired] and [h["spec"]["replicas"] for h in result.handover] == [4]
    # Not ours any more (handed over already, or the autoscaler's): nothing to hand over.
    assert replicas_handover(desired, live_worker(6, applied_by(FIELD_MANAGER, replicas=False))) is None
    assert replicas_handover(desired, None) is None  # a new Deployment starts without replicas
    # A Deployment that keeps its replicas never needs it; nor does a held-back one.
    kept = deployment.build(instance(), "worker")
    assert replicas_handover(kept, owned_by_us) is None
    assert plan([desired], {key(desired): owned_by_us}.get, [], workloads_blocked=True).handover == []


def test_status_and_health_gate_count_the_live_replicas_of_an_autoscaled_component() -> None:
    live = live_worker(5, [])
    live["metadata"]["generation"] = 3
    live["status"] = {"observedGeneration": 3, "replicas": 5, "updatedReplicas": 5, "readyReplicas": 5,
                      "availableReplicas": 5}  # fmt: skip
    assert component_state(None, live).is_ready and component_state(None, live).desired == 5
    assert not component_state(2, live).is_ready  # the spec's 2 would call a scaled-up worker not ready
    spec = instance({"autoscaling": {"worker": WORKER}}).spec
    release = Release("0.5.0", "registry.example.com/aperag/aperag:0.5.0")
    assert deployment.release_image(spec, "worker", release) == live["spec"]["template"]["spec"]["containers"][0][
        "image"]  # fmt: skip
    gated = observe_deployments(spec, {"worker": live}, autoscaled={"worker"})["worker"]
    assert gated.state.is_ready and gated.state.desired == 5
    assert not observe_deployments(spec, {"worker": live})["worker"].state.is_ready
    # Scaling up during a rollout: the new replicas are counted as not ready yet.
    live["spec"]["replicas"] = 8
    assert not observe_deployments(spec, {"worker": live}, autoscaled={"worker"})["worker"].state.is_ready


def test_the_upgrade_contributor_reads_which_components_are_autoscaled() -> None:
    contributors = ordered(default_contributors())
    names = [c.name for c in contributors]
    assert names.index("autoscaling") < names.index("upgrades")
    upgrades = next(c for c in contributors if c.name == "upgrades")
    assert "autoscaling" in upgrades.requires


def test_desired_children_keep_replicas_of_components_not_autoscaled() -> None:
    inst = instance()
    for obj in desired_children(inst, autoscaled={"api"}):
        if obj["kind"] == "Deployment":
            assert ("replicas" in obj["spec"]) == (obj["metadata"]["name"] != "demo-api")


def test_the_queues_are_the_apps() -> None:
    """The operator may not import the app (a layer contract): the names it scales on are checked here."""
    from aperag.ingest import celery_app

    assert autoscaling.QUEUE == celery_app.QUEUE == celery_app.celery_app.conf.task_default_queue
    # The periodic task goes elsewhere: it must not wake a worker scaled to zero.
    schedule = celery_app.celery_app.conf.beat_schedule["reconcile-stuck-documents"]
    assert schedule["options"]["queue"] == celery_app.PERIODIC_QUEUE != autoscaling.QUEUE
    # kombu's hash of unacknowledged tasks (acks late: taken and not finished).
    from kombu.transport.redis import Channel

    assert Channel.unacked_key == autoscaling.UNACKED
    assert celery_app.celery_app.conf.task_acks_late and celery_app.celery_app.conf.task_reject_on_worker_lost
