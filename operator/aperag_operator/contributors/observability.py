"""Metrics scraping, as a contributor: a ServiceMonitor when prometheus-operator's CRD is served, else
scrape annotations (builders/metrics.py says what each is).

The engine watches ServiceMonitors like any contributor's kind: a CRD installed (or removed) after the
operator started changes the kind's state, which wakes every ApeRAG, and the next reconcile swaps the
annotations for a ServiceMonitor (or back). ``status.observability.metrics`` says which is in use.
"""

from __future__ import annotations

from collections.abc import Mapping

from aperag_operator.builders import metrics
from aperag_operator.builders.common import Instance
from aperag_operator.cache import KindState
from aperag_operator.contributors.base import Context, Contribution
from aperag_operator.kinds import Kind, register

NAME = "observability"

SERVICE_MONITOR = register(
    Kind(metrics.SERVICE_MONITOR_API_VERSION, metrics.SERVICE_MONITOR_KIND, metrics.SERVICE_MONITOR_PLURAL)
)


class ObservabilityContributor:
    name = NAME
    requires: tuple[str, ...] = ()
    watched_kinds: tuple[Kind, ...] = (SERVICE_MONITOR,)
    #: Pruned when owned and no longer desired (metrics disabled, or the CRD gone).
    owned_kinds: tuple[Kind, ...] = (SERVICE_MONITOR,)

    def secret_names(self, instance: Instance) -> frozenset[str]:
        return frozenset()

    def contribute(self, context: Context, upstream: Mapping[str, Contribution]) -> Contribution:
        inst = context.instance
        if not metrics.wanted(inst):
            return Contribution(status={"observability": {"metrics": "Disabled"}})
        served = context.observed.state(SERVICE_MONITOR) is KindState.LISTED
        return Contribution(
            children=tuple(metrics.build(inst, service_monitor=served)),
            status={"observability": {"metrics": "ServiceMonitor" if served else "Annotations"}},
        )
