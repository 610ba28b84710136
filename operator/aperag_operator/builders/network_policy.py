"""NetworkPolicies (when ``spec.networkPolicy.enabled``).

* ``<name>-app``: the instance's pods accept traffic only from pods of the same instance, and (with
  ``spec.observability.metrics.enabled``) from the namespaces of ``scraperNamespaceLabels`` (Prometheus)
  on the ports that serve /metrics (api 8000, worker 8001);
* ``<name>-web``: the api (which also serves the web console) additionally accepts traffic from the
  ingress controller's namespace, on its port only. No other component is reachable from outside.

Egress is not restricted: external databases and LLM endpoints live anywhere.
"""

from __future__ import annotations

from aperag_operator.builders import metrics
from aperag_operator.builders.common import (
    API_PORT,
    Instance,
    Obj,
    child_name,
    finalize,
    metadata,
    selector_labels,
)


def wanted(inst: Instance) -> bool:
    return inst.spec.network_policy.enabled


def build_app(inst: Instance) -> Obj:
    rules: list[Obj] = [{"from": [{"podSelector": {"matchLabels": selector_labels(inst)}}]}]
    scraping = inst.spec.observability.metrics
    if scraping.enabled:
        rules.append(
            {
                "from": [{"namespaceSelector": {"matchLabels": dict(scraping.scraper_namespace_labels)}}],
                "ports": [{"protocol": "TCP", "port": port} for port in sorted(set(metrics.PORTS.values()))],
            }
        )
    return finalize(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": metadata(inst, child_name(inst, "app"), "network-policy"),
            "spec": {
                "podSelector": {"matchLabels": selector_labels(inst)},
                "policyTypes": ["Ingress"],
                "ingress": rules,
            },
        }
    )


def build_web(inst: Instance) -> Obj:
    return finalize(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": metadata(inst, child_name(inst, "web"), "network-policy"),
            "spec": {
                "podSelector": {"matchLabels": selector_labels(inst, "api")},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": dict(inst.spec.network_policy.ingress_namespace_labels)
                                }
                            }
                        ],
                        "ports": [{"protocol": "TCP", "port": API_PORT}],
                    }
                ],
            },
        }
    )


def build(inst: Instance) -> list[Obj]:
    return [build_app(inst), build_web(inst)]
