"""The ApeRAG custom resource's spec, as a pydantic model.

This module is the single source of truth for the CRD schema: ``python -m aperag_operator.crdgen``
renders ``crds/aperag.io_aperags.yaml`` from it. Conventions (see docs/design.md):

* Python names are snake_case, the API (aliases) camelCase.
* Every field has a ``description`` (it becomes ``kubectl explain`` text).
* CEL rules and any other ``x-kubernetes-*`` keys are passed through from ``json_schema_extra``
  on the model's ``model_config`` or on a ``Field``.
* Optional fields default to ``None`` and are simply not required in the CRD (never ``nullable``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator

from aperag_operator.spec.affinity import Affinity, LabelKey, LabelValue
from aperag_operator.spec.common import (
    DNS_SUBDOMAIN_PATTERN,
    ENV_NAME_PATTERN,
    IMAGE_REFERENCE_PATTERN,
    IMAGE_REPOSITORY_PATTERN,
    IMAGE_TAG_PATTERN,
    QUALIFIED_NAME_PATTERN,
    Quantity,
    Spec,
    cel,
    keys_match,
    spec_config,
)
from aperag_operator.spec.databases import DatabasesSpec, DatabaseStatus

API_GROUP = "aperag.io"
API_VERSION = "v1alpha1"
KIND = "ApeRAG"
PLURAL = "aperags"
SINGULAR = "aperag"
SHORT_NAMES = ["apr"]


# --- images ------------------------------------------------------------------------------------------


class ImageSpec(Spec):
    """Where the container images come from."""

    repository: str = Field(
        # The image Dockerfile.app builds (`make images`), under a registry placeholder: publish it and
        # set this to your registry's repository (docs/images.md).
        default="registry.example.com/aperag/aperag",
        min_length=1,
        max_length=255,
        pattern=IMAGE_REPOSITORY_PATTERN,
        description="Image repository of the ApeRAG app (api, worker, beat, flower): the image built from "
        "Dockerfile.app. The default names a placeholder registry; set your own. "
        "The tag is spec.version unless spec.image.tag is set.",
    )
    tag: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=IMAGE_TAG_PATTERN,
        description="Overrides the image tag (defaults to spec.version). Use it for a patched build of "
        "the same version.",
    )
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="imagePullPolicy of every container."
    )
    pull_secrets: list[Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]] = Field(
        default_factory=list,
        max_length=16,
        description="Names of docker-registry Secrets in the namespace used to pull the images.",
    )


# --- scheduling and resources ------------------------------------------------------------------------


class ResourceList(Spec):
    """An amount of compute resources."""

    cpu: Quantity | None = Field(default=None, description="CPU, as a Kubernetes quantity (e.g. 500m, 2).")
    memory: Quantity | None = Field(default=None, description="Memory, as a Kubernetes quantity (e.g. 512Mi, 2Gi).")
    ephemeral_storage: Quantity | None = Field(
        default=None,
        alias="ephemeral-storage",
        description="Local ephemeral storage, as a Kubernetes quantity.",
    )


class ResourceRequirements(Spec):
    """Compute resources of a component's main container. Omitted parts get the component's defaults
    (see docs/api.md)."""

    requests: ResourceList | None = Field(
        default=None, description="Minimum resources the container is scheduled with."
    )
    limits: ResourceList | None = Field(default=None, description="Maximum resources the container may use.")


class Toleration(Spec):
    """A Kubernetes toleration (same fields as core/v1 Toleration)."""

    key: LabelKey | None = Field(
        default=None, description="Taint key the toleration applies to; empty matches all keys."
    )
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal (default Equal).")
    value: LabelValue | None = Field(default=None, description="Taint value the toleration matches (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


class WorkloadSpec(Spec):
    """Settings shared by every component Deployment."""

    replicas: int = Field(default=1, ge=0, le=1000, description="Number of pods.")
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        pattern=IMAGE_REFERENCE_PATTERN,
        description="Full image reference for this component only (overrides spec.image and spec.version).",
    )
    resources: ResourceRequirements | None = Field(
        default=None,
        description="Requests and limits of the main container; defaults per component (docs/api.md).",
    )
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=32,
        description="Node labels the pods must be scheduled on.",
        json_schema_extra=keys_match(QUALIFIED_NAME_PATTERN, "nodeSelector keys must be valid label keys"),
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32, description="Tolerations of the pods.")
    affinity: Affinity | None = Field(
        default=None,
        description="A core/v1 Affinity for the pods. When omitted the operator adds a preferred (never "
        "required) anti-affinity spreading the pods over nodes.",
    )
    pod_annotations: dict[str, str] = Field(
        default_factory=dict,
        max_length=64,
        description="Extra annotations on the pods (not on the Deployment).",
        json_schema_extra=keys_match(QUALIFIED_NAME_PATTERN, "podAnnotations keys must be valid annotation keys"),
    )
    pod_labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=32,
        description="Extra labels on the pods. app.kubernetes.io/* keys are reserved for the operator.",
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.all(k, !k.startsWith('app.kubernetes.io/'))",
                    "app.kubernetes.io/* labels are set by the operator",
                ),
                cel(f"self.all(k, k.matches(r'{QUALIFIED_NAME_PATTERN}'))", "podLabels keys must be valid label keys"),
            ]
        },
    )


class ApiSpec(WorkloadSpec):
    """The HTTP API (``aperag serve``), which also serves the web console (spec.console)."""

    replicas: int = Field(
        default=2, ge=0, le=1000, description="Number of API pods (not applied while autoscaling.api is enabled)."
    )


class WorkerSpec(WorkloadSpec):
    """The ingestion workers (``aperag worker``, Celery)."""

    replicas: int = Field(
        default=2,
        ge=0,
        le=1000,
        description="Number of worker pods (not applied while autoscaling.worker is enabled).",
    )
    concurrency: int = Field(default=2, ge=1, le=64, description="Celery worker processes per pod.")
    termination_grace_period_seconds: int = Field(
        default=600,
        ge=30,
        le=86400,
        description="How long a worker pod that is stopped (scale-down, rollout, eviction) may finish its "
        "running tasks: Celery's warm shutdown takes no new task and waits for the running ones. A task "
        "still running after this is killed and, acknowledged late, delivered again to another worker "
        "(after BROKER_VISIBILITY_TIMEOUT_SECONDS). Set it above your longest indexing task.",
    )


class BeatSpec(WorkloadSpec):
    """The periodic task scheduler (``aperag beat``): one replica, never more, rolled out with Recreate."""

    model_config = spec_config(
        **{
            "x-kubernetes-validations": [
                cel("self.replicas == 1", "beat runs exactly one replica", fieldPath=".replicas")
            ]
        }
    )
    enabled: bool = Field(default=True, description="Run the beat scheduler.")
    replicas: int = Field(default=1, ge=0, le=1000, description="Must be 1: two schedulers would run every task twice.")


class FlowerSpec(WorkloadSpec):
    """Flower, the Celery monitoring UI (optional)."""

    enabled: bool = Field(default=False, description="Run Flower.")
    replicas: int = Field(default=1, ge=0, le=1, description="Number of Flower pods (0 or 1).")


class ComponentsSpec(Spec):
    """The app's components; each becomes a Deployment named <name>-<component>."""

    api: ApiSpec = Field(default_factory=ApiSpec, description="The HTTP API.")
    worker: WorkerSpec = Field(default_factory=WorkerSpec, description="The ingestion workers.")
    beat: BeatSpec = Field(default_factory=BeatSpec, description="The periodic scheduler (exactly one replica).")
    flower: FlowerSpec = Field(default_factory=FlowerSpec, description="Flower (Celery monitoring), off by default.")


class ConsoleSpec(Spec):
    """The web console. There is no separate frontend Deployment: the API process serves the console
    from the same origin as the API (docs/design.md, "The web console")."""

    enabled: bool = Field(
        default=True,
        description="The API serves the web console at /console/ (and redirects / there); false serves "
        "the API only. Sets APERAG_CONSOLE_ENABLED on the api container.",
    )


# --- app configuration -------------------------------------------------------------------------------


class KeySelector(Spec):
    """A key of a Secret or ConfigMap in the resource's namespace."""

    name: str = Field(..., pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Name of the object.")
    key: str = Field(..., min_length=1, description="Key inside the object's data.")
    optional: bool = Field(default=False, description="Do not fail when the object or key is missing.")


class EnvVarSource(Spec):
    """Where an environment variable's value comes from (exactly one source)."""

    model_config = spec_config(
        **{
            "x-kubernetes-validations": [
                cel(
                    "has(self.secretKeyRef) != has(self.configMapKeyRef)",
                    "exactly one of secretKeyRef or configMapKeyRef must be set",
                )
            ]
        }
    )
    secret_key_ref: KeySelector | None = Field(default=None, description="A key of a Secret (use this for API keys).")
    config_map_key_ref: KeySelector | None = Field(default=None, description="A key of a ConfigMap.")


class EnvVar(Spec):
    """An environment variable of the app containers (api, worker, beat, flower)."""

    model_config = spec_config(
        **{
            "x-kubernetes-validations": [
                cel("!(has(self.value) && has(self.valueFrom))", "value and valueFrom are mutually exclusive")
            ]
        }
    )
    name: str = Field(..., pattern=ENV_NAME_PATTERN, description="Variable name.")
    value: str | None = Field(default=None, description="Literal value (do not put secrets here; use valueFrom).")
    value_from: EnvVarSource | None = Field(default=None, description="Take the value from a Secret or ConfigMap key.")


class ObjectRef(Spec):
    """A Secret or ConfigMap in the resource's namespace."""

    name: str = Field(..., pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Name of the object.")
    optional: bool = Field(default=False, description="Do not fail when the object is missing.")


class EnvFromSource(Spec):
    """All keys of a Secret or ConfigMap as environment variables (exactly one source)."""

    model_config = spec_config(
        **{
            "x-kubernetes-validations": [
                cel(
                    "has(self.secretRef) != has(self.configMapRef)",
                    "exactly one of secretRef or configMapRef must be set",
                )
            ]
        }
    )
    prefix: str | None = Field(default=None, description="Prefix added to every variable name.")
    secret_ref: ObjectRef | None = Field(default=None, description="A Secret whose keys become variables.")
    config_map_ref: ObjectRef | None = Field(default=None, description="A ConfigMap whose keys become variables.")


class ApiKeysSecret(Spec):
    """The Secret key holding the API's Bearer keys (comma-separated)."""

    name: str = Field(..., pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Secret name.")
    key: str = Field(default="apiKeys", min_length=1, description="Key in the Secret.")


class AppSpec(Spec):
    """Configuration of the app processes."""

    api_keys_secret: ApiKeysSecret | None = Field(
        default=None,
        description="Secret with the API's Bearer keys (APERAG_API_KEYS). Without it the API accepts "
        "requests without a key: set it for anything but a demo.",
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level of the app.")
    config: dict[str, str] = Field(
        default_factory=dict,
        description="Non-secret settings (environment variable name to value), stored in the <name>-config "
        "ConfigMap and loaded by every app container. Changing them rolls the pods.",
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.all(k, k.matches('^[-._a-zA-Z][-._a-zA-Z0-9]*$'))",
                    "config keys must be valid environment variable names",
                )
            ]
        },
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        description="Extra environment variables, e.g. LLM and embedding API keys from Secrets. They win "
        "over config and over what the operator sets.",
    )
    env_from: list[EnvFromSource] = Field(
        default_factory=list, description="Secrets or ConfigMaps whose keys all become environment variables."
    )


# --- object storage ----------------------------------------------------------------------------------


#: Where the app containers already mount something (the writable /tmp of the read-only root).
RESERVED_MOUNT_PATHS = ("/tmp",)


class LocalObjectStorage(Spec):
    """A PersistentVolumeClaim ``<name>-objects`` shared by the api and worker pods (ReadWriteMany)."""

    model_config = spec_config(
        **{
            "x-kubernetes-validations": [
                cel(
                    "quantity(string(self.size)).compareTo(quantity(string(oldSelf.size))) >= 0",
                    "size cannot shrink: a volume can only be expanded",
                    fieldPath=".size",
                ),
                cel(
                    "has(self.storageClassName) == has(oldSelf.storageClassName) && "
                    "(!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)",
                    "storageClassName is immutable: the volume cannot move to another storage class",
                    fieldPath=".storageClassName",
                ),
            ]
        }
    )
    size: Quantity = Field(
        default="10Gi",
        description="Requested size of the shared volume. May grow (when the storage class allows volume "
        "expansion); may never shrink.",
    )
    storage_class_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
        description="StorageClass of the claim (must support ReadWriteMany); cluster default if omitted. Immutable.",
    )
    mount_path: str = Field(
        default="/data/objects",
        pattern=r"^/[^\s]*[^/\s]$",
        max_length=1024,
        description="Where the volume is mounted in api and worker pods: an absolute path, not / and not "
        "in " + ", ".join(RESERVED_MOUNT_PATHS) + " (already mounted).",
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    " && ".join(f"self != '{p}' && !self.startsWith('{p}/')" for p in RESERVED_MOUNT_PATHS),
                    "mountPath must not be " + " or ".join(RESERVED_MOUNT_PATHS) + " (or under it): the "
                    "containers already mount a writable volume there",
                )
            ]
        },
    )
    deletion_policy: Literal["Retain", "Delete"] = Field(
        default="Retain",
        description="What happens to the volume (and the documents on it) when the ApeRAG resource is "
        "deleted or objectStorage.type moves away from local. Retain (default): the claim stays, without "
        "owner reference, and is used again when an ApeRAG of the same name wants it; the status says so. "
        "Delete: the claim is deleted with the resource and when it is no longer used.",
    )


class S3Credentials(Spec):
    """The Secret holding the S3 access key."""

    name: str = Field(..., pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Secret name.")
    access_key_id_key: str = Field(default="accessKeyId", min_length=1, description="Key holding the access key id.")
    secret_access_key_key: str = Field(
        default="secretAccessKey", min_length=1, description="Key holding the secret access key."
    )


class S3ObjectStorage(Spec):
    """An S3-compatible bucket."""

    endpoint: str | None = Field(default=None, description="Endpoint URL (omit for AWS S3).")
    bucket: str = Field(..., min_length=3, max_length=63, description="Bucket name.")
    region: str | None = Field(default=None, description="Region of the bucket.")
    prefix: str | None = Field(default=None, description="Key prefix for all objects.")
    use_path_style: bool = Field(default=False, description="Use path-style addressing (MinIO and friends).")
    credentials_secret: S3Credentials = Field(..., description="Secret with the access key.")


class ObjectStorageSpec(Spec):
    """Where uploaded documents are stored."""

    model_config = spec_config(
        **{
            "x-kubernetes-validations": [
                cel(
                    "self.type != 's3' || has(self.s3)",
                    "s3 settings are required when type is s3",
                    fieldPath=".s3",
                ),
                cel(
                    "self.type == 's3' || !has(self.s3)",
                    "s3 settings are only allowed when type is s3",
                    fieldPath=".s3",
                ),
            ]
        }
    )
    type: Literal["local", "s3"] = Field(default="local", description="local (a shared ReadWriteMany volume) or s3.")
    local: LocalObjectStorage = Field(
        default_factory=LocalObjectStorage, description="Settings of the shared volume (type local)."
    )
    s3: S3ObjectStorage | None = Field(default=None, description="Settings of the bucket (type s3).")


# --- networking --------------------------------------------------------------------------------------


class IngressSpec(Spec):
    """An Ingress in front of the API Service, which serves everything under ``/``: the API, the
    OpenAI-compatible ``/v1``, ``/mcp`` and the web console (``/console/``, and ``/`` redirects there)."""

    model_config = spec_config(
        **{
            "x-kubernetes-validations": [
                cel(
                    "!self.enabled || has(self.host)",
                    "host is required when ingress is enabled",
                    fieldPath=".host",
                ),
            ]
        }
    )
    enabled: bool = Field(default=False, description="Create the Ingress.")
    host: str | None = Field(default=None, pattern=DNS_SUBDOMAIN_PATTERN, description="Host name served.")
    class_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
        description="IngressClass name; the cluster default if omitted.",
    )
    tls_secret_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Secret with the TLS certificate for the host.",
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        max_length=64,
        description="Annotations of the Ingress.",
        json_schema_extra=keys_match(QUALIFIED_NAME_PATTERN, "annotation keys must be valid annotation keys"),
    )


class NetworkPolicySpec(Spec):
    """NetworkPolicies restricting traffic to the app's pods."""

    enabled: bool = Field(default=False, description="Create the NetworkPolicies.")
    ingress_namespace_labels: dict[str, LabelValue] = Field(
        default_factory=lambda: {"kubernetes.io/metadata.name": "ingress-nginx"},
        max_length=16,
        description="Labels of the namespace(s) of the ingress controller, allowed to reach the api (which "
        "also serves the web console).",
        json_schema_extra=keys_match(QUALIFIED_NAME_PATTERN, "keys must be valid label keys"),
    )


class PodDisruptionBudgetSpec(Spec):
    """PodDisruptionBudgets for api and worker."""

    enabled: bool = Field(default=True, description="Create PodDisruptionBudgets for api and worker.")
    max_unavailable: int = Field(default=1, ge=1, description="Pods of a component that may be evicted at once.")


# --- upgrades ----------------------------------------------------------------------------------------


def _pod_metadata_rules(what: Literal["label", "annotation"]) -> dict[str, Any]:
    """Key syntax checked at admission, not when the Job is created."""
    rules = [
        cel(
            f"self.all(k, k.matches(r'{QUALIFIED_NAME_PATTERN}'))",
            f"{what} keys must be qualified names (an optional DNS prefix and '/', then at most 63 "
            "characters)",
        )
    ]
    if what == "label":
        rules.append(
            cel(
                "self.all(k, !k.startsWith('app.kubernetes.io/'))",
                "app.kubernetes.io/* labels are set by the operator",
            )
        )
    return {"x-kubernetes-validations": rules}


class MigrationJobSpec(Spec):
    """Pod template metadata of the migration Jobs (for example to pick outcomes in tests, or for a
    service mesh sidecar annotation)."""

    pod_labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=32,
        description="Extra labels on the migration pods. app.kubernetes.io/* keys are reserved.",
        json_schema_extra=_pod_metadata_rules("label"),
    )
    pod_annotations: dict[str, str] = Field(
        default_factory=dict,
        max_length=32,
        description="Extra annotations on the migration pods.",
        json_schema_extra=_pod_metadata_rules("annotation"),
    )


class UpgradeSpec(Spec):
    """How a change of version or image is rolled out: migration Job, health gate, automatic rollback
    (docs/api.md, "Upgrades and rollbacks")."""

    run_migrations: bool = Field(
        default=True,
        description="Run `aperag migrate upgrade head` as a Job with the new image before any pod runs it "
        "(first install included). false: no Job (for users who migrate by hand); the status says so.",
    )
    migration_timeout_seconds: int = Field(
        default=600,
        ge=30,
        le=86400,
        description="activeDeadlineSeconds of each migration Job; a Job still running then fails (and is "
        "rolled back like any failed migration).",
    )
    progress_deadline_seconds: int = Field(
        default=600,
        ge=30,
        le=86400,
        description="Health gate: every enabled component's Deployment must be updated and available at "
        "the new version within this many seconds of the rollout's start, or the rollout failed.",
    )
    backup_before_upgrade: bool = Field(
        default=False,
        description="Back up the managed PostgreSQL (a KubeBlocks Backup OpsRequest) before migrating; a "
        "failed backup stops the upgrade before anything changed. Ignored, and said so in the status, "
        "for an external PostgreSQL.",
    )
    backup_timeout_seconds: int = Field(
        default=3600,
        ge=60,
        le=604800,
        description="How long the pre-upgrade backup may take (the OpsRequest's timeoutSeconds).",
    )
    rollback_on_failure: bool = Field(
        default=True,
        description="When the migration or the health gate fails: put the previous version back "
        "(Deployments first, then a downgrade Job with the new image to the revision recorded for it).",
    )
    history_limit: int = Field(
        default=10,
        ge=1,
        le=50,
        description="How many upgrades status.history keeps (the records that make a rollback possible).",
    )
    migration_job: MigrationJobSpec = Field(
        default_factory=MigrationJobSpec, description="Pod template metadata of the migration Jobs."
    )


# --- autoscaling -------------------------------------------------------------------------------------


class ScaleDownSpec(Spec):
    """How fast an autoscaler removes pods (the HorizontalPodAutoscaler's ``behavior.scaleDown``)."""

    stabilization_window_seconds: int = Field(
        default=300,
        ge=0,
        le=3600,
        description="Pods are removed only when every recommendation of this window asks for fewer: a "
        "short dip in the load does not remove pods.",
    )
    pods_per_period: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="At most this many pods are removed per periodSeconds. Unset (and percentPerPeriod "
        "unset): the HorizontalPodAutoscaler's default (any number at once).",
    )
    percent_per_period: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="At most this percentage of the pods is removed per periodSeconds. With podsPerPeriod "
        "too, the smaller of the two applies.",
    )
    period_seconds: int = Field(
        default=60, ge=1, le=1800, description="The period of podsPerPeriod and percentPerPeriod."
    )


def _bounds_rule() -> Any:
    return cel("self.minReplicas <= self.maxReplicas", "minReplicas must be <= maxReplicas", fieldPath=".minReplicas")


class WorkerAutoscalingSpec(Spec):
    """Scale the ingestion workers on the length of the Celery queue they consume, with a KEDA
    ScaledObject (redis trigger). Without KEDA the workers scale on CPU with a HorizontalPodAutoscaler
    and the AutoscalingReady condition says so (reason KEDANotInstalled)."""

    model_config = spec_config(
        **{
            "x-kubernetes-validations": [
                _bounds_rule(),
                cel(
                    "!has(self.fallbackReplicas) || self.fallbackReplicas <= self.maxReplicas",
                    "fallbackReplicas must be <= maxReplicas",
                    fieldPath=".fallbackReplicas",
                ),
            ]
        }
    )
    enabled: bool = Field(
        default=False,
        description="Scale the workers automatically. The autoscaler then owns the worker Deployment's "
        "replicas: spec.components.worker.replicas is not applied (and given back when this is turned off).",
    )
    min_replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Fewest workers. 0 is allowed: with an empty queue every worker is removed; uploads "
        "still succeed and their tasks wait in the queue (nothing is lost) until the first task wakes a "
        "worker (queue longer than activationListLength), which takes up to pollingInterval plus a pod's "
        "start. The CPU fallback (no KEDA) keeps at least one worker.",
    )
    max_replicas: int = Field(default=10, ge=1, le=1000, description="Most workers.")
    list_length: int = Field(
        default=5,
        ge=1,
        le=100000,
        description="Target queued tasks per worker: the workers are scaled to queue length / listLength.",
    )
    activation_list_length: int = Field(
        default=0,
        ge=0,
        le=100000,
        description="With minReplicas 0: the queue must be longer than this to wake the first worker. Keep "
        "the default 0 there: a queue of activationListLength tasks or fewer never wakes a worker.",
    )
    polling_interval: int = Field(
        default=30, ge=1, le=3600, description="Seconds between two looks at the queue (KEDA pollingInterval)."
    )
    cooldown_period: int = Field(
        default=300,
        ge=0,
        le=86400,
        description="With minReplicas 0: seconds the queue must stay empty before the last workers are "
        "removed (KEDA cooldownPeriod). Between minReplicas (at least 1) and maxReplicas, scaleDown rules.",
    )
    database_index: int | None = Field(
        default=None,
        ge=0,
        le=1023,
        description="The Redis database of the queue. Unset: the app's REDIS_DB from spec.app.config or a "
        "literal spec.app.env value, else 0.",
    )
    fallback_replicas: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Workers to run once reading the queue failed 3 polls in a row (KEDA's fallback). KEDA "
        "v2.20 applies it only to failures on an open connection: while Redis refuses connections its "
        "scaler cannot be built, the workers stay as they are and AutoscalingReady says why "
        "(FailedGetExternalMetric). Unset: no fallback.",
    )
    target_cpu_utilization: int = Field(
        default=80,
        ge=1,
        le=1000,
        description="Only without KEDA: the CPU HorizontalPodAutoscaler's target, in percent of the "
        "workers' CPU requests.",
    )
    scale_down: ScaleDownSpec = Field(default_factory=ScaleDownSpec, description="How fast workers are removed.")

    @model_validator(mode="after")
    def _bounds(self) -> WorkerAutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must be <= maxReplicas")
        if self.fallback_replicas is not None and self.fallback_replicas > self.max_replicas:
            raise ValueError("fallbackReplicas must be <= maxReplicas")
        return self


class ApiAutoscalingSpec(Spec):
    """Scale the API on CPU (and memory) with an autoscaling/v2 HorizontalPodAutoscaler. Needs the
    resource metrics API (metrics-server) in the cluster."""

    model_config = spec_config(**{"x-kubernetes-validations": [_bounds_rule()]})
    enabled: bool = Field(
        default=False,
        description="Scale the API automatically. The HorizontalPodAutoscaler then owns the api "
        "Deployment's replicas: spec.components.api.replicas is not applied (and given back when this is "
        "turned off).",
    )
    min_replicas: int = Field(default=2, ge=1, le=1000, description="Fewest API pods.")
    max_replicas: int = Field(default=10, ge=1, le=1000, description="Most API pods.")
    target_cpu_utilization: int = Field(
        default=80, ge=1, le=1000, description="Target average CPU use, in percent of the pods' CPU requests."
    )
    target_memory_utilization: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Also scale on memory: target average use in percent of the pods' memory requests. "
        "Unset: CPU only.",
    )
    scale_down: ScaleDownSpec = Field(default_factory=ScaleDownSpec, description="How fast API pods are removed.")

    @model_validator(mode="after")
    def _bounds(self) -> ApiAutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must be <= maxReplicas")
        return self


class AutoscalingSpec(Spec):
    """Autoscaling of the workers (on the queue) and of the API (on CPU). See docs/api.md, "Autoscaling"."""

    api: ApiAutoscalingSpec = Field(
        default_factory=ApiAutoscalingSpec, description="The API on CPU (and memory), with an HPA."
    )
    worker: WorkerAutoscalingSpec = Field(
        default_factory=WorkerAutoscalingSpec, description="The workers on the Celery queue, with KEDA."
    )


# --- placeholders filled by later issues -------------------------------------------------------------


class MetricsSpec(Spec):
    """Prometheus scraping of the app's /metrics (docs/observability.md)."""

    enabled: bool = Field(
        default=True,
        description="Make the app's /metrics scrapable: headless Services <name>-api-metrics and "
        "<name>-worker-metrics, and a ServiceMonitor <name> when the monitoring.coreos.com CRDs are served "
        "(prometheus-operator), else prometheus.io/scrape annotations on those Services.",
    )
    interval: str = Field(
        default="30s", pattern=r"^([0-9]+(ms|s|m|h))+$", description="Scrape interval of the ServiceMonitor."
    )
    service_monitor_labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=16,
        description="Labels of the ServiceMonitor (those your Prometheus selects ServiceMonitors by, e.g. "
        "release: kube-prometheus-stack).",
        json_schema_extra=keys_match(QUALIFIED_NAME_PATTERN, "keys must be valid label keys"),
    )
    scraper_namespace_labels: dict[str, LabelValue] = Field(
        default_factory=lambda: {"kubernetes.io/metadata.name": "monitoring"},
        max_length=16,
        description="With spec.networkPolicy.enabled: labels of the namespace(s) Prometheus runs in, allowed to "
        "reach the metrics ports (api 8000, worker 8001) of the app's pods.",
        json_schema_extra=keys_match(QUALIFIED_NAME_PATTERN, "keys must be valid label keys"),
    )


class ObservabilitySpec(Spec):
    """Metrics and traces of the app (docs/observability.md)."""

    metrics: MetricsSpec = Field(default_factory=MetricsSpec, description="Prometheus scraping of the app.")
    otlp_endpoint: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="OTLP/HTTP endpoint of an OpenTelemetry collector (or Jaeger, port 4318) the app sends its "
        "traces to (OTEL_EXPORTER_OTLP_ENDPOINT). Unset: no traces. An unreachable collector never breaks the app.",
    )


# --- the resource ------------------------------------------------------------------------------------


#: KEDA's redis scaler takes a host and port (and the credentials from a Secret), never a URL.
_QUEUE_NEEDS_HOST = (
    "!self.autoscaling.worker.enabled || !has(self.databases.redis.external) "
    "|| !has(self.databases.redis.external.urlSecretRef)"
)


class ApeRAGSpec(Spec):
    """Desired state of an ApeRAG deployment."""

    model_config = spec_config(
        **{
            "x-kubernetes-validations": [
                cel(
                    _QUEUE_NEEDS_HOST,
                    "autoscaling.worker needs the Redis host: KEDA cannot read a connection URL from a Secret "
                    "(databases.redis.external.urlSecretRef); set host, port, tls and credentialsSecretRef instead",
                    fieldPath=".autoscaling.worker.enabled",
                )
            ]
        }
    )

    version: str = Field(
        ...,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$",
        description="ApeRAG version: the image tag of the app image.",
    )
    image: ImageSpec = Field(default_factory=ImageSpec, description="Image repositories and pull settings.")
    components: ComponentsSpec = Field(
        default_factory=ComponentsSpec, description="Replicas, resources and scheduling of each component."
    )
    app: AppSpec = Field(default_factory=AppSpec, description="Configuration of the app processes.")
    object_storage: ObjectStorageSpec = Field(
        default_factory=ObjectStorageSpec, description="Where uploaded documents are stored."
    )
    databases: DatabasesSpec = Field(
        default_factory=DatabasesSpec,
        description="PostgreSQL, Redis, vector and full-text stores: managed by KubeBlocks or external.",
    )
    console: ConsoleSpec = Field(
        default_factory=ConsoleSpec, description="The web console, served by the API at /console/."
    )
    ingress: IngressSpec = Field(
        default_factory=IngressSpec, description="Ingress for the API (and the web console it serves)."
    )
    network_policy: NetworkPolicySpec = Field(
        default_factory=NetworkPolicySpec, description="NetworkPolicies for the app's pods."
    )
    pod_disruption_budget: PodDisruptionBudgetSpec = Field(
        default_factory=PodDisruptionBudgetSpec, description="PodDisruptionBudgets for api and worker."
    )
    upgrade: UpgradeSpec = Field(
        default_factory=UpgradeSpec,
        description="How version changes are rolled out: migration Job, health gate, automatic rollback.",
    )
    autoscaling: AutoscalingSpec = Field(
        default_factory=AutoscalingSpec,
        description="Autoscaling: the workers on the Celery queue (KEDA), the API on CPU (HPA).",
    )
    observability: ObservabilitySpec = Field(
        default_factory=ObservabilitySpec, description="Metrics and traces of the app."
    )

    @model_validator(mode="after")
    def _queue_needs_host(self) -> ApeRAGSpec:
        external = self.databases.redis.external
        if self.autoscaling.worker.enabled and external is not None and external.url_secret_ref is not None:
            raise ValueError(
                "autoscaling.worker needs the Redis host: KEDA cannot read a connection URL from a Secret"
            )
        return self


# --- status (documented in the CRD, written by the operator) -----------------------------------------


class Condition(Spec):
    """A condition in the Kubernetes API convention."""

    type: str = Field(..., description="Ready, Progressing, Degraded or Paused (more may be added).")
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str = Field(..., description="CamelCase machine-readable reason of the last transition.")
    message: str = Field(default="", description="Human-readable details.")
    last_transition_time: str = Field(..., description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, description="metadata.generation the condition is based on.")


class ComponentStatus(Spec):
    """Replica counts of one component's Deployment."""

    desired: int = Field(default=0, description="Replicas asked for.")
    ready: int = Field(default=0, description="Ready pods.")
    updated: int = Field(default=0, description="Pods of the current pod template.")
    available: int = Field(default=0, description="Pods available for minReadySeconds.")
    ready_state: bool = Field(default=False, alias="isReady", description="All desired pods are updated and ready.")


class ReleaseStatus(Spec):
    """One release of the app: version, image and the database schema revision it runs on."""

    version: str = Field(..., description="spec.version of the release (the pods' app.kubernetes.io/version).")
    image: str = Field(..., description="The app image (repository:tag) of the release.")
    revision: str | None = Field(
        default=None,
        description="The Alembic revision of the schema this release runs on, as its migration Job reported "
        "it (base = an empty schema). Unset when unknown (migrations skipped, no report).",
    )


class TargetRef(Spec):
    """A release the upgrade machine stopped for (version and image)."""

    version: str = Field(..., description="spec.version.")
    image: str = Field(..., description="The app image (repository:tag).")


class UpgradeStatus(Spec):
    """The upgrade state machine's state: what runs, what is being installed, and the step it is at. A
    restarted operator resumes from it and from the Jobs it names."""

    phase: str = Field(
        ...,
        description="The step under way (BackingUp, Migrating, RollingOut, RollingBack, Downgrading) or "
        "how the last operation ended (Complete, Failed, RollbackFailed, Refused).",
    )
    operation: str = Field(
        ..., description="Install (first version), Upgrade, or Rollback (spec.version set back to a version "
        "in status.history)."
    )
    running: ReleaseStatus | None = Field(
        default=None, description="The release that serves (the last one that passed the health gate)."
    )
    target: ReleaseStatus | None = Field(
        default=None, description="The release being installed, or the one the last operation was about."
    )
    deployed: TargetRef | None = Field(
        default=None,
        description="The release the Deployments are set to now; unset: no Deployment may exist yet (first "
        "install before its first migration).",
    )
    attempt: int = Field(
        default=0, description="Counts operations; part of the migration Jobs' names, so each attempt has its own."
    )
    job: str | None = Field(default=None, description="The migration Job of the current step.")
    backup: str | None = Field(
        default=None, description="The Backup OpsRequest of the current (or last) operation."
    )
    backup_message: str | None = Field(
        default=None, description="What happened to the pre-upgrade backup (including why none was taken)."
    )
    seen: bool = Field(
        default=False,
        description="The Job or OpsRequest of the current step has been observed (if it then disappears "
        "before its result was read, the step failed).",
    )
    schema_changed: bool = Field(
        default=False, description="The operation's migration changed the schema (a rollback must downgrade)."
    )
    database_revision: str | None = Field(
        default=None, description="The schema revision the last migration Job reported."
    )
    reason: str | None = Field(
        default=None,
        description="Why the operation failed or is being rolled back (MigrationFailed, MultipleHeads, "
        "RolloutFailed, BackupFailed, RollbackFailed, UnknownVersion, Cancelled).",
    )
    message: str = Field(default="", description="Human-readable account of the step or the outcome.")
    started_at: str | None = Field(default=None, description="When the operation started (RFC 3339).")
    step_started_at: str | None = Field(default=None, description="When the current step started (RFC 3339).")
    finished_at: str | None = Field(default=None, description="When the operation ended (RFC 3339).")
    stopped_for: TargetRef | None = Field(
        default=None,
        description="After Failed, RollbackFailed or Refused: the spec's version and image when it stopped. "
        "Nothing is retried until spec.version or spec.image changes, or the annotation "
        "aperag.io/retry-upgrade gets a new value.",
    )
    retry_token: str | None = Field(
        default=None, description="The value of aperag.io/retry-upgrade when the operation stopped."
    )


class HistoryEntry(Spec):
    """One finished operation (newest last)."""

    version: str = Field(..., description="The version installed (or attempted).")
    image: str = Field(..., description="Its app image.")
    revision: str | None = Field(
        default=None, description="The schema revision it ran on; what a rollback to it downgrades to."
    )
    from_version: str | None = Field(default=None, description="The version that ran before.")
    operation: str = Field(..., description="Install, Upgrade or Rollback.")
    outcome: str = Field(
        ..., description="Succeeded, Failed (rolled back or not: see message), RollbackFailed or Cancelled."
    )
    reason: str | None = Field(default=None, description="Why it did not succeed.")
    message: str = Field(default="", description="What happened.")
    started_at: str | None = Field(default=None, description="When it started (RFC 3339).")
    finished_at: str | None = Field(default=None, description="When it ended (RFC 3339).")


class AutoscalerCondition(Spec):
    """A condition of an autoscaler, as the autoscaler reported it."""

    type: str = Field(..., description="Ready, Active, Fallback, Paused (ScaledObject); AbleToScale, "
                      "ScalingActive, ScalingLimited (HorizontalPodAutoscaler).")
    status: str = Field(..., description="True, False or Unknown.")
    # No defaults in the status schema: the stored status must be exactly what the operator wrote, or a
    # resync would see a difference and write it again.
    reason: str | None = Field(default=None, description="The autoscaler's reason.")
    message: str | None = Field(default=None, description="The autoscaler's message.")


class ComponentAutoscalingStatus(Spec):
    """The autoscaler of one component and what it reports."""

    kind: str = Field(..., description="ScaledObject (KEDA) or HorizontalPodAutoscaler.")
    name: str = Field(..., description="Its name, in the ApeRAG's namespace.")
    metric: str = Field(..., description="What it scales on (the queue, CPU, memory).")
    min_replicas: int = Field(..., description="Fewest replicas.")
    max_replicas: int = Field(..., description="Most replicas.")
    current_replicas: int | None = Field(default=None, description="Replicas now (the HPA's currentReplicas).")
    desired_replicas: int | None = Field(
        default=None, description="Replicas the HPA last asked for (desiredReplicas)."
    )
    horizontal_pod_autoscaler: str | None = Field(
        default=None, description="The HorizontalPodAutoscaler KEDA made for the ScaledObject."
    )
    conditions: list[AutoscalerCondition] = Field(
        default_factory=list, description="The ScaledObject's (or the HPA's) own conditions."
    )
    hpa_conditions: list[AutoscalerCondition] = Field(
        default_factory=list, description="For a ScaledObject: the conditions of the HPA KEDA made for it."
    )


class ApeRAGStatus(Spec):
    """Observed state, written by the operator."""

    model_config = spec_config(**{"x-kubernetes-preserve-unknown-fields": True})
    observed_generation: int | None = Field(default=None, description="metadata.generation last reconciled.")
    phase: str | None = Field(
        default=None,
        description="Pending, Progressing, Ready, Degraded or Paused; during an upgrade the step: BackingUp, "
        "Migrating, RollingOut or RollingBack.",
    )
    version: str | None = Field(
        default=None, description="Version that is running (the last one that passed the health gate)."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Progressing, Degraded, Paused."
    )
    components: dict[str, ComponentStatus] = Field(
        default_factory=dict, description="Per-component replica counts, keyed by component name."
    )
    databases: list[DatabaseStatus] = Field(
        default_factory=list,
        description="Each database in use (managed KubeBlocks Cluster or external) and whether it is ready; "
        "the roll-up is the DatabasesReady condition. Never contains credentials.",
    )
    upgrade: UpgradeStatus | None = Field(
        default=None,
        description="The upgrade state machine: running and target release, current step, migration Job.",
    )
    history: list[HistoryEntry] = Field(
        default_factory=list,
        description="The last spec.upgrade.historyLimit operations (version, image, schema revision, start, "
        "end, outcome), newest last. A rollback needs the target's record here.",
    )
    autoscaling: dict[str, ComponentAutoscalingStatus] = Field(
        default_factory=dict,
        description="The autoscaler of each autoscaled component (api, worker) with its conditions; the roll-up "
        "is the AutoscalingReady condition.",
    )


#: Fields an earlier CRD declared, and defaulted (so every object stored under it carries them), that the
#: spec no longer has. The model forbids unknown fields, so an object read while such a CRD is still
#: installed (Helm never upgrades crds/: the operator may well be upgraded first) would fail validation and
#: never be reconciled again; these paths are dropped before validation instead. Once the current CRD is
#: installed the API server prunes them on read, and refuses them on write (strict field validation).
RETIRED_FIELDS: tuple[tuple[str, ...], ...] = (
    # The separate frontend Deployment (upstream's frontend image): the API serves the console now.
    ("components", "frontend"),
    ("image", "frontendRepository"),
)


def without_retired_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` without the :data:`RETIRED_FIELDS` (a copy where something is dropped; never modified)."""
    out = spec
    for path in RETIRED_FIELDS:
        *parents, leaf = path
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        # Copy the dicts along the path, then drop the field from the copy.
        out = dict(out)
        copy = out
        for part in parents:
            copy[part] = dict(copy[part])
            copy = copy[part]
        del copy[leaf]
    return out


def parse_spec(spec: dict[str, Any]) -> ApeRAGSpec:
    """Validate a spec as read from the API server (defaults already applied by the CRD). Retired fields
    an older CRD left on the object are ignored (:data:`RETIRED_FIELDS`)."""
    return ApeRAGSpec.model_validate(without_retired_fields(spec))
