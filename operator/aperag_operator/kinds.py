"""The Kubernetes kinds the operator reads or writes: plain data, no client.

Each ``Kind`` says how to address it (apiVersion, plural) and how the operator watches it. The cache
keys every object by ``(type_path, namespace, name)`` where ``type_path`` is ``apiVersion/Kind``.
"""

from __future__ import annotations

from dataclasses import dataclass

from aperag_operator.spec.model import API_GROUP, API_VERSION, KIND, PLURAL

ObjKey = tuple[str, str, str]  # (apiVersion/Kind, namespace, name)


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str
    #: A server-side label selector for the watch, for kinds of which the operator only cares about a
    #: few objects among many (the Pods of migration Jobs). Empty: every object of the kind is listed
    #: and the cache keeps the operator's own (owner reference or managed-by label).
    selector: str = ""

    @property
    def type_path(self) -> str:
        return f"{self.api_version}/{self.kind}"

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def crd_name(self) -> str:
        """The CustomResourceDefinition name (for kinds served by a CRD)."""
        return f"{self.plural}.{self.group}"

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


APERAG = Kind(f"{API_GROUP}/{API_VERSION}", KIND, PLURAL)

SERVICE_ACCOUNT = Kind("v1", "ServiceAccount", "serviceaccounts")
CONFIG_MAP = Kind("v1", "ConfigMap", "configmaps")
PERSISTENT_VOLUME_CLAIM = Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims")
SERVICE = Kind("v1", "Service", "services")
SECRET = Kind("v1", "Secret", "secrets")
EVENT = Kind("v1", "Event", "events")
POD = Kind("v1", "Pod", "pods")
DEPLOYMENT = Kind("apps/v1", "Deployment", "deployments")
JOB = Kind("batch/v1", "Job", "jobs")
POD_DISRUPTION_BUDGET = Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
INGRESS = Kind("networking.k8s.io/v1", "Ingress", "ingresses")
NETWORK_POLICY = Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies")
KUBEBLOCKS_CLUSTER = Kind("apps.kubeblocks.io/v1", "Cluster", "clusters")
HORIZONTAL_POD_AUTOSCALER = Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
#: KEDA's kinds (served only where KEDA's CRDs are installed).
SCALED_OBJECT = Kind("keda.sh/v1alpha1", "ScaledObject", "scaledobjects")
TRIGGER_AUTHENTICATION = Kind("keda.sh/v1alpha1", "TriggerAuthentication", "triggerauthentications")

#: The core children: desired from the spec alone, watched, and deleted when owned by an ApeRAG that
#: no longer wants them. (The documents PVC belongs to the object-storage contributor, which decides
#: whether it may ever be deleted.)
CORE_CHILD_KINDS: tuple[Kind, ...] = (
    SERVICE_ACCOUNT,
    CONFIG_MAP,
    SERVICE,
    DEPLOYMENT,
    POD_DISRUPTION_BUDGET,
    INGRESS,
    NETWORK_POLICY,
)

#: Kinds held back while a gate is closed (missing Secret, databases not ready): the app workloads.
WORKLOAD_KINDS = frozenset({DEPLOYMENT.kind})

#: Every kind by apiVersion/Kind, for the client layer (plural names).
KNOWN_KINDS: dict[str, Kind] = {
    k.type_path: k
    for k in (
        APERAG,
        SERVICE_ACCOUNT,
        CONFIG_MAP,
        PERSISTENT_VOLUME_CLAIM,
        SERVICE,
        SECRET,
        EVENT,
        POD,
        DEPLOYMENT,
        JOB,
        POD_DISRUPTION_BUDGET,
        INGRESS,
        NETWORK_POLICY,
        KUBEBLOCKS_CLUSTER,
        HORIZONTAL_POD_AUTOSCALER,
        SCALED_OBJECT,
        TRIGGER_AUTHENTICATION,
    )
}


def register(kind: Kind) -> Kind:
    """Makes a kind known to the client layer (contributors declare their own kinds)."""
    KNOWN_KINDS.setdefault(kind.type_path, kind)
    return kind


def kind_of(obj: dict[str, object]) -> Kind:
    type_path = f"{obj['apiVersion']}/{obj['kind']}"
    try:
        return KNOWN_KINDS[type_path]
    except KeyError:
        raise KeyError(f"unknown kind {type_path}: declare it in aperag_operator.kinds") from None


def key(obj: dict[str, object]) -> ObjKey:
    """(apiVersion/Kind, namespace, name) of an object."""
    meta = obj["metadata"]
    assert isinstance(meta, dict)
    return (f"{obj['apiVersion']}/{obj['kind']}", str(meta.get("namespace", "")), str(meta["name"]))
