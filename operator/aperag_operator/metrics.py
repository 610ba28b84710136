"""The operator's Prometheus metrics (prometheus-client), served at ``/metrics`` by its own HTTP server
beside ``/healthz`` and ``/readyz`` (health.py).

Two kinds:

* counters and histograms the engine feeds as things happen (controller.py): reconciles by result and
  their duration, apply errors by kind, operations that ended, migration Jobs and rollbacks (the facts
  of ``upgrade.facts``, counted once the status that records them is written);
* gauges read at scrape time from the engine (:class:`EngineView`): the work queue's depth and the age
  of its oldest key, busy workers, the ApeRAGs by phase, each one's Ready / Degraded / Paused, the
  step its upgrade machine stopped at, and the seconds since its last successful reconcile. Read at
  scrape time, they are never stale and cost nothing between scrapes.

Every label value a counter can take is created at 0 up front: ``increase()`` in an alert cannot see the
first increment of a series that did not exist before it. docs/observability.md lists every metric.
This is an I/O-layer module: the pure modules (reconcile, contributors, upgrade, ...) never import it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from aperag_operator import __version__
from aperag_operator.upgrade.facts import (
    MIGRATION_ACTIONS,
    MIGRATION_OUTCOMES,
    OPERATIONS,
    OUTCOMES,
    ROLLBACK_OUTCOMES,
    ROLLBACK_TRIGGERS,
    Facts,
)

PREFIX = "aperag_operator"
RESULTS = ("success", "error")
#: The phases always reported (at 0 when no ApeRAG is in them); others appear when seen.
PHASES = (
    "Pending", "Progressing", "Ready", "Degraded", "Paused",
    "BackingUp", "Migrating", "RollingOut", "RollingBack",
)  # fmt: skip
#: ``status.upgrade.phase`` values in which the machine stopped and waits for a person.
STOPPED_PHASES = ("Failed", "RollbackFailed", "Refused")

Obj = dict[str, Any]
ParentKey = tuple[str, str]


class EngineView(Protocol):
    """What the scrape-time gauges read from the engine (the controller implements it)."""

    workers: int

    def queue_depth(self) -> int: ...

    def queue_oldest_age(self) -> float: ...

    def busy_workers(self) -> int: ...

    def resources(self) -> Iterable[Obj]:
        """The ApeRAGs in the cache, as last written."""
        ...

    def last_success(self) -> Mapping[ParentKey, float]:
        """ApeRAG -> Unix time of its last reconcile that ended without an error."""
        ...


def _condition(status: Mapping[str, Any], ctype: str) -> Mapping[str, Any]:
    for cond in status.get("conditions") or []:
        if cond.get("type") == ctype:
            found: Mapping[str, Any] = cond
            return found
    return {}


class _EngineCollector(Collector):
    def __init__(self, engine: EngineView) -> None:
        self.engine = engine

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration (collect() may need the running event loop)

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        yield GaugeMetricFamily(f"{PREFIX}_workqueue_depth", "ApeRAGs waiting for a worker", engine.queue_depth())
        yield GaugeMetricFamily(
            f"{PREFIX}_workqueue_oldest_item_age_seconds",
            "How long the longest-waiting ApeRAG in the work queue has waited (0 when empty)",
            engine.queue_oldest_age(),
        )
        yield GaugeMetricFamily(f"{PREFIX}_workers", "Concurrent reconciles allowed (--workers)", engine.workers)
        yield GaugeMetricFamily(f"{PREFIX}_workers_busy", "Reconciles running now", engine.busy_workers())

        by_phase = GaugeMetricFamily(f"{PREFIX}_resources", "ApeRAGs by status.phase", labels=["phase"])
        ready = GaugeMetricFamily(
            f"{PREFIX}_resource_ready", "1 when the ApeRAG's Ready condition is True", labels=["namespace", "name"]
        )
        degraded = GaugeMetricFamily(
            f"{PREFIX}_resource_degraded",
            "1 when the ApeRAG's Degraded condition is True (reason: the condition's)",
            labels=["namespace", "name", "reason"],
        )
        paused = GaugeMetricFamily(
            f"{PREFIX}_resource_paused", "1 when the ApeRAG is paused (aperag.io/paused)", labels=["namespace", "name"]
        )
        stopped = GaugeMetricFamily(
            f"{PREFIX}_resource_upgrade_stopped",
            "1 while the ApeRAG's last upgrade or rollback stopped and waits for a person "
            "(status.upgrade.phase Failed, RollbackFailed or Refused)",
            labels=["namespace", "name", "phase", "operation", "reason"],
        )
        since = GaugeMetricFamily(
            f"{PREFIX}_seconds_since_last_successful_reconcile",
            "Seconds since the ApeRAG's last reconcile that ended without an error",
            labels=["namespace", "name"],
        )
        counts = dict.fromkeys(PHASES, 0)
        last = engine.last_success()
        now = time.time()
        for obj in engine.resources():
            meta = obj.get("metadata") or {}
            key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
            status: Mapping[str, Any] = obj.get("status") or {}
            phase = str(status.get("phase") or "Pending")
            counts[phase] = counts.get(phase, 0) + 1
            ready.add_metric(key, 1.0 if _condition(status, "Ready").get("status") == "True" else 0.0)
            cond = _condition(status, "Degraded")
            is_degraded = cond.get("status") == "True"
            degraded.add_metric([*key, str(cond.get("reason", "")) if is_degraded else ""], float(is_degraded))
            paused.add_metric(key, 1.0 if _condition(status, "Paused").get("status") == "True" else 0.0)
            upgrade = status.get("upgrade") or {}
            if upgrade.get("phase") in STOPPED_PHASES:
                labels = [str(upgrade.get(f) or "") for f in ("phase", "operation", "reason")]
                stopped.add_metric([*key, *labels], 1.0)
            if key in last:
                since.add_metric(key, max(0.0, now - last[key]))
        for phase, count in sorted(counts.items()):
            by_phase.add_metric([phase], count)
        yield from (by_phase, ready, degraded, paused, stopped, since)


class OperatorMetrics:
    """The operator's metrics in a registry of their own (one per engine: tests run several in a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        r = self.registry
        Gauge(f"{PREFIX}_build_info", "The operator's version", ["version"], registry=r).labels(__version__).set(1)
        self.reconciles = Counter(
            f"{PREFIX}_reconciles", "Reconciles by result (error: raised, or an apply failed on the server side "
            "and the ApeRAG is retried with backoff)", ["result"], registry=r,
        )  # fmt: skip
        self.reconcile_seconds = Histogram(
            f"{PREFIX}_reconcile_duration_seconds", "Time one reconcile took", ["result"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )  # fmt: skip
        for result in RESULTS:
            self.reconciles.labels(result)
            self.reconcile_seconds.labels(result)
        self.apply_errors = Counter(
            f"{PREFIX}_apply_errors", "Server-side applies of children that failed, by the child's kind and the "
            "failure (Invalid, Conflict, ServerError, Unavailable, ...)", ["kind", "reason"], registry=r,
        )  # fmt: skip
        self.operations = Counter(
            f"{PREFIX}_upgrades", "Install, upgrade and rollback operations that ended, by outcome "
            "(status.history)", ["operation", "outcome"], registry=r,
        )  # fmt: skip
        for operation in OPERATIONS:
            for outcome in OUTCOMES:
                self.operations.labels(operation, outcome)
        self.rollbacks = Counter(
            f"{PREFIX}_rollbacks", "Rollbacks by trigger (automatic: a failed step undone; manual: spec.version "
            "set back) and outcome", ["trigger", "outcome"], registry=r,
        )  # fmt: skip
        for trigger in ROLLBACK_TRIGGERS:
            for outcome in ROLLBACK_OUTCOMES:
                self.rollbacks.labels(trigger, outcome)
        self.migration_seconds = Histogram(
            f"{PREFIX}_migration_duration_seconds", "Migration (upgrade) and downgrade Jobs: from the step's start "
            "to the result the operator read", ["action", "outcome"], registry=r,
            buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600),
        )  # fmt: skip
        for action in MIGRATION_ACTIONS:
            for outcome in MIGRATION_OUTCOMES:
                self.migration_seconds.labels(action, outcome)

    def bind(self, engine: EngineView) -> None:
        """Adds the scrape-time gauges read from ``engine``."""
        self.registry.register(_EngineCollector(engine))

    def reconciled(self, result: str, seconds: float) -> None:
        self.reconciles.labels(result).inc()
        self.reconcile_seconds.labels(result).observe(seconds)

    def apply_failed(self, kind: str, reason: str) -> None:
        self.apply_errors.labels(kind, reason).inc()

    def record(self, facts: Facts) -> None:
        for done in facts.finished:
            self.operations.labels(done.operation, done.outcome).inc()
        for run in facts.migrations:
            if run.seconds is not None:
                self.migration_seconds.labels(run.action, run.outcome).observe(run.seconds)
        for rollback in facts.rollbacks:
            self.rollbacks.labels(rollback.trigger, rollback.outcome).inc()

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
