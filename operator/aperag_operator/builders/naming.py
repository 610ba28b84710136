"""How long an ApeRAG's name may be: derived from the longest name anything derives from it.

Service names, and label values such as a StatefulSet pod's ``controller-revision-hash``, are limited
to 63 characters (DNS labels). The operator's own children append a suffix to the resource name, and
so does KubeBlocks for the objects it creates for a managed database: the PostgreSQL Service is
``<name>-pg-postgresql-postgresql``. A name that is too long for one of them would be accepted and
then wait forever (the database never comes up), so the CRD refuses it at admission instead.
"""

from __future__ import annotations

from aperag_operator.builders import autoscaling, backup_opsrequest, migration_job
from aperag_operator.builders.kubeblocks_cluster import DATABASE_KEYS, ENGINES, cluster_name, service_name

DNS_LABEL_MAX = 63
#: KubeBlocks' InstanceSet labels each pod with controller-revision-hash=<cluster>-<component>-<hash>;
#: the hash (a Kubernetes SafeEncodeString of a 32-bit FNV hash) has at most 10 characters.
REVISION_HASH_LENGTH = 10
#: The operator's own children, by the suffix they add (docs/api.md lists them).
CHILD_SUFFIXES = (
    "", "-config", "-objects", "-api", "-worker", "-beat", "-flower", "-app", "-web",
    "-api-metrics", "-worker-metrics",
    autoscaling.TRIGGER_AUTHENTICATION_SUFFIX,
)  # fmt: skip


def derived_names(name: str) -> dict[str, str]:
    """Every DNS-label name (or label value) derived from ``name``, by what it is."""
    names = {f"child {name}{suffix}": f"{name}{suffix}" for suffix in CHILD_SUFFIXES}
    for key in DATABASE_KEYS:
        facts = ENGINES[key]
        cluster = cluster_name(name, key)
        names[f"KubeBlocks Service of {key}"] = service_name(name, key)
        names[f"KubeBlocks headless Service of {key}"] = f"{cluster}-{facts.component}-headless"
        names[f"KubeBlocks pod revision label of {key}"] = f"{cluster}-{facts.component}-{'x' * REVISION_HASH_LENGTH}"
    names["migration Job"] = name + "x" * migration_job.NAME_SUFFIX_MAX_LEN
    names["backup OpsRequest"] = name + "x" * backup_opsrequest.NAME_SUFFIX_MAX_LEN
    names["KEDA's HorizontalPodAutoscaler of the workers"] = f"{autoscaling.KEDA_HPA_PREFIX}{name}-worker"
    return names


def longest_suffix() -> tuple[str, int]:
    """What derives the longest name, and how many characters it adds."""
    probe = "n"
    what, longest = max(derived_names(probe).items(), key=lambda item: len(item[1]))
    return what, len(longest) - len(probe)


def max_name_length() -> int:
    return DNS_LABEL_MAX - longest_suffix()[1]
