"""What makes the app's /metrics scrapable (``spec.observability.metrics``): headless Services and a
prometheus-operator ServiceMonitor, or scrape annotations.

The API serves /metrics on its port ``http`` (8000); a worker on its health server's port ``http``
(8001). Each gets a headless Service ``<name>-api-metrics`` / ``<name>-worker-metrics`` (labelled
``aperag.io/metrics: "true"``; no cluster IP: Prometheus scrapes every pod behind it). With the
ServiceMonitor CRD served, one ServiceMonitor ``<name>`` selects those Services; without it the Services
carry the ``prometheus.io/scrape``, ``/port`` and ``/path`` annotations that annotation-based scrape
configs read. Neither touches a pod template, so installing prometheus-operator later (the operator
then swaps the annotations for a ServiceMonitor) rolls no pod.
"""

from __future__ import annotations

from aperag_operator.builders.common import (
    API_PORT,
    HEALTH_PORT,
    Instance,
    Obj,
    child_name,
    finalize,
    metadata,
    selector_labels,
)
from aperag_operator.builders.deployment import enabled

SERVICE_MONITOR_API_VERSION = "monitoring.coreos.com/v1"
SERVICE_MONITOR_KIND = "ServiceMonitor"
SERVICE_MONITOR_PLURAL = "servicemonitors"
#: On the metrics Services: what the ServiceMonitor selects.
METRICS_LABEL = "aperag.io/metrics"
PATH = "/metrics"
#: The component -> the port its /metrics is served on (the container port named http).
PORTS = {"api": API_PORT, "worker": HEALTH_PORT}
#: Service labels copied onto the scraped series (as app_kubernetes_io_instance, ..._component).
TARGET_LABELS = ("app.kubernetes.io/instance", "app.kubernetes.io/component")


def wanted(inst: Instance) -> bool:
    return inst.spec.observability.metrics.enabled


def components(inst: Instance) -> list[str]:
    return [c for c in PORTS if enabled(inst, c)]


def service_name(inst: Instance, component: str) -> str:
    return child_name(inst, f"{component}-metrics")


def build_service(inst: Instance, component: str, annotate: bool) -> Obj:
    meta = metadata(inst, service_name(inst, component), component)
    meta["labels"][METRICS_LABEL] = "true"
    if annotate:
        meta["annotations"] = {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(PORTS[component]),
            "prometheus.io/path": PATH,
        }
    return finalize(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {
                "clusterIP": "None",
                "selector": selector_labels(inst, component),
                "ports": [{"name": "http", "port": PORTS[component], "targetPort": "http", "protocol": "TCP"}],
            },
        }
    )


def build_service_monitor(inst: Instance) -> Obj:
    spec = inst.spec.observability.metrics
    meta = metadata(inst, inst.name, "metrics")
    meta["labels"] = {**spec.service_monitor_labels, **meta["labels"]}
    return finalize(
        {
            "apiVersion": SERVICE_MONITOR_API_VERSION,
            "kind": SERVICE_MONITOR_KIND,
            "metadata": meta,
            "spec": {
                "selector": {"matchLabels": {**selector_labels(inst), METRICS_LABEL: "true"}},
                "namespaceSelector": {"matchNames": [inst.namespace]},
                "targetLabels": list(TARGET_LABELS),
                "endpoints": [{"port": "http", "path": PATH, "interval": spec.interval}],
            },
        }
    )


def build(inst: Instance, service_monitor: bool) -> list[Obj]:
    """The metrics Services (annotated when there is no ServiceMonitor) and the ServiceMonitor."""
    out = [build_service(inst, c, annotate=not service_monitor) for c in components(inst)]
    if service_monitor:
        out.append(build_service_monitor(inst))
    return out
