"""The databases part of the ApeRAG spec: PostgreSQL, Redis, a vector store and a full-text store.

Each database is either managed (a KubeBlocks 1.0 ``Cluster`` the operator creates) or external (an
endpoint plus a Secret holding its credentials). The CEL rules here are the API server's guard rails;
the Python validators mirror the ones that matter so the operator never acts on a spec the API server
would have refused.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from aperag_operator.spec.common import (
    DNS_SUBDOMAIN_PATTERN,
    QuantityString,
    Spec,
    cel,
    validations,
)

DeletionPolicy = Literal["Retain", "Delete", "WipeOut"]
VectorStoreType = Literal["pgvector", "qdrant"]
FullTextStoreType = Literal["postgresql", "elasticsearch"]

# KubeBlocks serviceVersion values are plain semantic versions ("16.4.0").
SERVICE_VERSION_PATTERN = r"^[0-9]+\.[0-9]+\.[0-9]+$"
ServiceVersion = Annotated[str, StringConstraints(pattern=SERVICE_VERSION_PATTERN, max_length=32)]
SecretName = Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN_PATTERN, min_length=1, max_length=253)]
SecretKey = Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z0-9]+$", min_length=1, max_length=253)]
HostName = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[^\s/:]+$")]
Port = Annotated[int, Field(ge=1, le=65535)]


def _cel(*rules: tuple[str, str]) -> dict[str, Any]:
    return validations(*(cel(rule, message) for rule, message in rules))


def _major(service_version: str) -> str:
    return service_version.split(".", 1)[0]


# --- building blocks -------------------------------------------------------------------------------------


class ResourceQuantities(Spec):
    """CPU and memory amounts, in Kubernetes quantity syntax."""

    cpu: QuantityString | None = Field(default=None, description="CPU, for example 500m or '1'.")
    memory: QuantityString | None = Field(default=None, description="Memory, for example 1Gi.")


class ComputeResources(Spec):
    """CPU and memory for each database pod, shaped like a container's resources."""

    requests: ResourceQuantities = Field(
        default_factory=ResourceQuantities,
        description="Guaranteed CPU and memory per pod.",
        json_schema_extra={"default": {}},
    )
    limits: ResourceQuantities = Field(
        default_factory=ResourceQuantities,
        description="Upper bound of CPU and memory per pod.",
        json_schema_extra={"default": {}},
    )

    def to_kubernetes(self) -> dict[str, dict[str, str]]:
        """The ``resources`` object of a pod template (unset amounts left out)."""
        out: dict[str, dict[str, str]] = {}
        for part, amounts in (("requests", self.requests), ("limits", self.limits)):
            values = amounts.model_dump(exclude_none=True)
            if values:
                out[part] = values
        return out


def _resources_field(cpu_request: str, memory: str, cpu_limit: str, what: str) -> Any:
    # Memory request == limit: a database pod should not be the first one evicted under memory pressure.
    value = ComputeResources(
        requests=ResourceQuantities(cpu=cpu_request, memory=memory),
        limits=ResourceQuantities(cpu=cpu_limit, memory=memory),
    )
    return Field(
        default_factory=lambda: value.model_copy(deep=True),
        description=f"CPU and memory of each {what} pod. Setting it replaces the whole default.",
        # The CRD default carries the values themselves, not just "{}", so `kubectl get -o yaml` shows
        # what the pods get.
        json_schema_extra={"default": value.model_dump(by_alias=True, exclude_none=True)},
    )


class StorageSpec(Spec):
    """The persistent volume of each database pod."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0",
                "storage size cannot shrink: a volume can only be expanded",
            ),
            (
                "self.storageClassName == oldSelf.storageClassName",
                "storageClassName is immutable: existing volumes cannot move to another storage class",
            ),
        )
    )

    size: QuantityString = Field(
        default="20Gi",
        description="Size of the data volume of each pod. May grow (when the storage class allows "
        "volume expansion); may never shrink.",
    )
    storage_class_name: Annotated[str, StringConstraints(max_length=253)] = Field(
        default="",
        description="StorageClass of the data volumes; empty means the cluster's default StorageClass. Immutable.",
    )


class CredentialsSecretRef(Spec):
    """A Secret in the ApeRAG's namespace holding a user name and a password."""

    name: SecretName = Field(description="Name of the Secret, in the namespace of the ApeRAG resource.")
    username_key: Annotated[str, StringConstraints(max_length=253, pattern=r"^[-._a-zA-Z0-9]*$")] = Field(
        default="username",
        description="Key of the user name in the Secret. Empty means the connection uses no user name "
        "(for example Redis with only a password).",
    )
    password_key: SecretKey = Field(default="password", description="Key of the password in the Secret.")


class SecretKeyRef(Spec):
    """One key of a Secret in the ApeRAG's namespace."""

    name: SecretName = Field(description="Name of the Secret, in the namespace of the ApeRAG resource.")
    key: SecretKey = Field(description="Key in the Secret.")


# --- managed (KubeBlocks) --------------------------------------------------------------------------------


class _ManagedBase(Spec):
    deletion_policy: DeletionPolicy | None = Field(
        default=None,
        description="What happens to this database when the ApeRAG resource is deleted; unset means "
        "spec.databases.deletionPolicy. Retain: the KubeBlocks Cluster and its data stay "
        "(terminationPolicy DoNotTerminate, no owner reference). Delete: the Cluster and its volumes "
        "are deleted, backups stay. WipeOut: the Cluster, its volumes and its backups are deleted.",
    )
    storage: StorageSpec = Field(
        default_factory=StorageSpec,
        description="Data volume of each pod.",
        json_schema_extra={"default": {}},
    )


def _service_version_field(default: str, what: str) -> Any:
    return Field(
        default=default,
        description=f"{what} version, as a KubeBlocks serviceVersion (major.minor.patch). Patch and "
        "minor versions may change; the major version is immutable (a major upgrade needs a data "
        "migration KubeBlocks does not do in place).",
        json_schema_extra=_cel(
            (
                "self.split('.')[0] == oldSelf.split('.')[0]",
                "the major version of a managed database cannot change in place",
            )
        ),
    )


class ManagedPostgreSQL(_ManagedBase):
    """A PostgreSQL cluster managed by KubeBlocks (ClusterDefinition postgresql, topology replication)."""

    service_version: ServiceVersion = _service_version_field("16.4.0", "PostgreSQL")
    replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="Number of PostgreSQL instances: one primary, the rest streaming replicas (Patroni).",
    )
    resources: ComputeResources = _resources_field("250m", "1Gi", "1", "PostgreSQL")


class ManagedRedis(_ManagedBase):
    """A standalone Redis managed by KubeBlocks (ClusterDefinition redis, topology standalone)."""

    service_version: ServiceVersion = _service_version_field("7.2.4", "Redis")
    resources: ComputeResources = _resources_field("100m", "512Mi", "500m", "Redis")


class ManagedQdrant(_ManagedBase):
    """A Qdrant cluster managed by KubeBlocks (ClusterDefinition qdrant, topology cluster)."""

    service_version: ServiceVersion = _service_version_field("1.10.0", "Qdrant")
    replicas: int = Field(default=1, ge=1, le=16, description="Number of Qdrant nodes.")
    resources: ComputeResources = _resources_field("250m", "1Gi", "1", "Qdrant")


class ManagedElasticsearch(_ManagedBase):
    """An Elasticsearch 8 cluster managed by KubeBlocks (ComponentDefinition elasticsearch-8)."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "(self.replicas == 1) == (oldSelf.replicas == 1)",
                "Elasticsearch cannot move between single-node (1 replica) and multi-node (more than "
                "1 replica) in place",
            )
        )
    )

    service_version: ServiceVersion = _service_version_field("8.8.2", "Elasticsearch")
    replicas: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Number of Elasticsearch nodes. 1 runs a single-node cluster; more run a multi-node "
        "cluster in which every node holds all roles. Cannot switch between the two in place.",
    )
    resources: ComputeResources = _resources_field("500m", "2Gi", "1", "Elasticsearch")


# --- external --------------------------------------------------------------------------------------------


_HOST_OR_URL = (
    "has(self.host) != has(self.urlSecretRef)",
    "set exactly one of host or urlSecretRef",
)


class ExternalPostgreSQL(Spec):
    """A PostgreSQL server the operator does not manage."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            _HOST_OR_URL,
            (
                "!has(self.host) || has(self.credentialsSecretRef)",
                "credentialsSecretRef is required with host",
            ),
        )
    )

    host: HostName | None = Field(default=None, description="Host name or IP address of the server.")
    port: Port = Field(default=5432, description="TCP port of the server.")
    database: Annotated[str, StringConstraints(min_length=1, max_length=63)] = Field(
        default="aperag", description="Name of the database ApeRAG uses; it must exist."
    )
    tls: bool = Field(default=False, description="Connect with TLS (sslmode=require).")
    credentials_secret_ref: CredentialsSecretRef | None = Field(
        default=None, description="Secret with the user name and password."
    )
    url_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Instead of host, port, database and credentials: a Secret key holding a full "
        "connection URL (postgresql://user:password@host:port/database?sslmode=...).",
    )


class ExternalRedis(Spec):
    """A Redis server the operator does not manage."""

    model_config = ConfigDict(json_schema_extra=_cel(_HOST_OR_URL))

    host: HostName | None = Field(default=None, description="Host name or IP address of the server.")
    port: Port = Field(default=6379, description="TCP port of the server.")
    tls: bool = Field(default=False, description="Connect with TLS (rediss://).")
    credentials_secret_ref: CredentialsSecretRef | None = Field(
        default=None,
        description="Secret with the password (and, unless usernameKey is empty, the ACL user name). "
        "Unset means no authentication.",
    )
    url_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Instead of host, port and credentials: a Secret key holding a full connection URL "
        "(redis://user:password@host:port/0 or rediss://...).",
    )


class ExternalQdrant(Spec):
    """A Qdrant server the operator does not manage."""

    model_config = ConfigDict(
        json_schema_extra=_cel(("has(self.url) != has(self.urlSecretRef)", "set exactly one of url or urlSecretRef"))
    )

    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$", max_length=2048)] | None = Field(
        default=None, description="HTTP(S) URL of the Qdrant REST API, for example http://qdrant:6333."
    )
    url_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Instead of url: a Secret key holding the URL."
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the Qdrant API key; unset means no API key."
    )


class ExternalElasticsearch(Spec):
    """An Elasticsearch server the operator does not manage."""

    model_config = ConfigDict(json_schema_extra=_cel(_HOST_OR_URL))

    host: HostName | None = Field(default=None, description="Host name or IP address of the server.")
    port: Port = Field(default=9200, description="TCP port of the HTTP API.")
    tls: bool = Field(default=False, description="Use HTTPS.")
    credentials_secret_ref: CredentialsSecretRef | None = Field(
        default=None, description="Secret with the user name and password; unset means no authentication."
    )
    url_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Instead of host, port and credentials: a Secret key holding a full URL "
        "(https://user:password@host:9200).",
    )


# --- one database: managed or external -------------------------------------------------------------------

_ONE_OF = (
    "has(self.managed) != has(self.external)",
    "set exactly one of managed or external",
)
_NO_SWITCH = (
    "has(self.managed) == has(oldSelf.managed)",
    "a database cannot switch between managed and external in place",
)


class _Database(Spec):
    @model_validator(mode="after")
    def _exactly_one(self) -> _Database:
        if (getattr(self, "managed", None) is None) == (getattr(self, "external", None) is None):
            raise ValueError("set exactly one of managed or external")
        return self

    @property
    def is_managed(self) -> bool:
        return getattr(self, "managed", None) is not None


class PostgreSQLSpec(_Database):
    """Where ApeRAG keeps its metadata: a managed PostgreSQL or an external one."""

    model_config = ConfigDict(json_schema_extra=_cel(_ONE_OF, _NO_SWITCH))

    managed: ManagedPostgreSQL | None = Field(default=None, description="Run PostgreSQL with KubeBlocks.")
    external: ExternalPostgreSQL | None = Field(default=None, description="Use an existing PostgreSQL.")


class RedisSpec(_Database):
    """The task queue and cache: a managed Redis or an external one."""

    model_config = ConfigDict(json_schema_extra=_cel(_ONE_OF, _NO_SWITCH))

    managed: ManagedRedis | None = Field(default=None, description="Run Redis with KubeBlocks.")
    external: ExternalRedis | None = Field(default=None, description="Use an existing Redis.")


class QdrantSpec(_Database):
    """The Qdrant vector store: managed or external."""

    model_config = ConfigDict(json_schema_extra=_cel(_ONE_OF, _NO_SWITCH))

    managed: ManagedQdrant | None = Field(default=None, description="Run Qdrant with KubeBlocks.")
    external: ExternalQdrant | None = Field(default=None, description="Use an existing Qdrant.")


class ElasticsearchSpec(_Database):
    """The Elasticsearch full-text store: managed or external."""

    model_config = ConfigDict(json_schema_extra=_cel(_ONE_OF, _NO_SWITCH))

    managed: ManagedElasticsearch | None = Field(default=None, description="Run Elasticsearch with KubeBlocks.")
    external: ExternalElasticsearch | None = Field(default=None, description="Use an existing Elasticsearch.")


class VectorStoreSpec(Spec):
    """Where chunk embeddings are stored and searched."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("!has(self.qdrant) || self.type == 'qdrant'", "qdrant may only be set when type is qdrant"),
        )
    )

    type: VectorStoreType = Field(
        default="pgvector",
        description="pgvector (in the PostgreSQL database above; no extra database) or qdrant. Immutable: "
        "the vectors are not migrated between stores.",
        json_schema_extra=_cel(("self == oldSelf", "vectorStore.type is immutable")),
    )
    qdrant: QdrantSpec | None = Field(
        default=None,
        description="The Qdrant to use when type is qdrant; unset means a managed Qdrant with defaults.",
    )

    @model_validator(mode="after")
    def _qdrant_only_for_qdrant(self) -> VectorStoreSpec:
        if self.qdrant is not None and self.type != "qdrant":
            raise ValueError("qdrant may only be set when type is qdrant")
        return self

    @property
    def effective_qdrant(self) -> QdrantSpec | None:
        """The Qdrant in use (a managed one with defaults when type is qdrant and nothing is set)."""
        if self.type != "qdrant":
            return None
        return self.qdrant or QdrantSpec(managed=ManagedQdrant())


class FullTextStoreSpec(Spec):
    """Where the full-text (keyword) index lives."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.elasticsearch) || self.type == 'elasticsearch'",
                "elasticsearch may only be set when type is elasticsearch",
            ),
        )
    )

    type: FullTextStoreType = Field(
        default="postgresql",
        description="postgresql (PostgreSQL full-text search in the database above; no extra database) "
        "or elasticsearch. Immutable: the index is not migrated between stores.",
        json_schema_extra=_cel(("self == oldSelf", "fullTextStore.type is immutable")),
    )
    elasticsearch: ElasticsearchSpec | None = Field(
        default=None,
        description="The Elasticsearch to use when type is elasticsearch; unset means a managed "
        "Elasticsearch with defaults.",
    )

    @model_validator(mode="after")
    def _elasticsearch_only_for_elasticsearch(self) -> FullTextStoreSpec:
        if self.elasticsearch is not None and self.type != "elasticsearch":
            raise ValueError("elasticsearch may only be set when type is elasticsearch")
        return self

    @property
    def effective_elasticsearch(self) -> ElasticsearchSpec | None:
        """The Elasticsearch in use (when type is elasticsearch and none is set: a managed one)."""
        if self.type != "elasticsearch":
            return None
        return self.elasticsearch or ElasticsearchSpec(managed=ManagedElasticsearch())


# --- the whole databases section -------------------------------------------------------------------------


class DatabasesSpec(Spec):
    """PostgreSQL, Redis, vector and full-text stores: managed by KubeBlocks or external.

    The default is a managed PostgreSQL (metadata, pgvector vectors and full-text search) and a managed
    Redis (task queue), retained when the ApeRAG resource is deleted.
    """

    deletion_policy: DeletionPolicy = Field(
        default="Retain",
        description="What happens to managed databases when the ApeRAG resource is deleted (each database "
        "may override it). Retain (default): the KubeBlocks Clusters, their volumes, credentials and "
        "backups stay; recreating the ApeRAG with the same name picks them up again. Delete: the Clusters "
        "and their volumes are deleted; backups stay. WipeOut: Clusters, volumes and backups are deleted. "
        "External databases are never touched.",
    )
    postgresql: PostgreSQLSpec = Field(
        default_factory=lambda: PostgreSQLSpec(managed=ManagedPostgreSQL()),
        description="PostgreSQL for metadata (and, by default, vectors and full-text search).",
        json_schema_extra={"default": {"managed": {}}},
    )
    redis: RedisSpec = Field(
        default_factory=lambda: RedisSpec(managed=ManagedRedis()),
        description="Redis: the Celery broker and cache.",
        json_schema_extra={"default": {"managed": {}}},
    )
    vector_store: VectorStoreSpec = Field(
        default_factory=VectorStoreSpec,
        description="The vector store.",
        json_schema_extra={"default": {}},
    )
    full_text_store: FullTextStoreSpec = Field(
        default_factory=FullTextStoreSpec,
        description="The full-text store.",
        json_schema_extra={"default": {}},
    )


# --- status ----------------------------------------------------------------------------------------------


class DatabaseStatus(Spec):
    """The observed state of one database (never any credential)."""

    name: Literal["postgresql", "redis", "qdrant", "elasticsearch"] = Field(description="Which database.")
    mode: Literal["Managed", "External"] = Field(description="Managed by KubeBlocks, or external.")
    ready: bool = Field(default=False, description="Whether the app may use it.")
    phase: str = Field(
        default="",
        description="Managed: the KubeBlocks Cluster's phase (Creating, Running, Updating, Abnormal, "
        "Failed, ...), or Missing. External: Configured, or SecretMissing.",
    )
    reason: str = Field(default="", description="Why it is (not) ready, as a CamelCase reason.")
    message: str = Field(default="", description="Details, for example the Cluster's own message.")
    cluster: str | None = Field(default=None, description="Name of the KubeBlocks Cluster (managed only).")
    deletion_policy: DeletionPolicy | None = Field(
        default=None, description="Effective deletion policy (managed only)."
    )
    endpoint: str | None = Field(
        default=None, description="host:port the app connects to; unset when the URL comes from a Secret."
    )
