"""Settings read from the environment.

The names follow upstream ApeRAG where it has one; docs/app.md is the contract the operator relies on,
so every variable read here must be documented there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

# EMBEDDING_MODEL values of EMBEDDING_BACKEND=local (aperag.embedding loads them).
LOCAL_EMBEDDING_MODELS = ("all-MiniLM-L6-v2", "multilingual-e5-small")


class ConfigError(ValueError):
    """A setting has a value the app cannot use."""


def _get(env: Mapping[str, str], name: str, default: str = "") -> str:
    return env.get(name, default).strip()


def _get_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _get(env, name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


def _get_positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = _get_int(env, name, default)
    if value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value}")
    return value


def _get_non_negative_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = _get_int(env, name, default)
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
    return value


def _get_positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _get(env, name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{name} must be a positive number, got {raw!r}")
    return value


def _get_choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _get(env, name, default).lower() or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _get_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name).lower()
    if not raw:
        return default
    return raw in {"1", "true", "yes", "on"}


def _sqlalchemy_postgres_url(url: str) -> str:
    """A libpq-style URL (postgres:// or postgresql://) as SQLAlchemy's psycopg 3 URL."""
    for scheme in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme):]
    raise ConfigError("DATABASE_URL must start with postgresql:// or postgres://")


@dataclass(frozen=True)
class Settings:
    # Metadata database. An empty host means "no database configured": `aperag serve` then starts
    # an embedded PostgreSQL (see aperag.embedded_pg).
    postgres_host: str = ""
    postgres_port: int = 5432
    postgres_db: str = "aperag"
    postgres_user: str = "postgres"
    postgres_password: str = ""
    # libpq sslmode (disable, require, verify-full, ...); empty: the driver's default.
    postgres_sslmode: str = ""
    # A full URL (DATABASE_URL, e.g. from a Secret) wins over the POSTGRES_* parts.
    database_url_override: str = ""
    # Connections each process keeps open to it, and the API's worker threads (aperag.db.session).
    db_pool_size: int = 20

    redis_host: str = ""
    redis_port: int = 6379
    redis_user: str = ""
    redis_password: str = ""
    redis_db: int = 0
    redis_ssl: bool = False
    # A full URL (REDIS_URL, e.g. from a Secret) wins over the REDIS_* parts.
    redis_url_override: str = ""

    vector_db_type: str = "pgvector"
    qdrant_url: str = ""
    qdrant_api_key: str = ""
    # Local (embedded) Qdrant: ":memory:" or a directory. Used when QDRANT_URL is empty.
    qdrant_path: str = ":memory:"
    qdrant_collection: str = "aperag_chunks"

    fulltext_type: str = "postgres"
    es_host_name: str = "127.0.0.1"
    es_port: int = 9200
    es_protocol: str = "http"
    es_user: str = ""
    es_password: str = ""
    es_index: str = "aperag_chunks"
    # A full URL (ES_URL, e.g. from a Secret) wins over ES_PROTOCOL/ES_HOST_NAME/ES_PORT.
    es_url_override: str = ""

    object_store_type: str = "local"
    object_store_local_root_dir: str = "/data/objects"
    object_store_s3_endpoint: str = ""
    object_store_s3_region: str = ""
    object_store_s3_access_key: str = ""
    object_store_s3_secret_key: str = ""
    object_store_s3_bucket: str = "aperag"
    object_store_s3_prefix_path: str = ""
    object_store_s3_use_path_style: bool = True

    embedding_backend: str = "local"
    embedding_model: str = "all-MiniLM-L6-v2"
    embedding_api_base: str = ""
    embedding_api_key: str = ""
    embedding_dimension: int = 384
    embedding_batch_size: int = 32
    # Concurrent search queries embedded in one forward pass, by one thread (0: each request embeds
    # its own query on its own thread). See aperag.embedding.batching.
    query_embedding_batch: int = 64
    # BLAS/OpenMP threads of the local model (0: the libraries' default, one per core). See
    # aperag.embedding._limit_threads.
    embedding_threads: int = 1

    chunk_size: int = 200
    chunk_overlap_size: int = 20
    index_batch_size: int = 256
    # Pending documents of one collection indexed together (shared forward passes); 1: one at a time.
    ingest_batch_documents: int = 16
    max_upload_bytes: int = 20 * 1024 * 1024
    # Parse budgets per document (aperag.parsing.ParseLimits).
    max_document_pages: int = 2000
    max_document_unpacked_bytes: int = 200 * 1024 * 1024
    max_document_chars: int = 5_000_000

    api_keys: tuple[str, ...] = field(default_factory=tuple)
    # The web console (aperag.console) at /console/, served by the API process.
    console_enabled: bool = True
    # Signs the console's session cookie; empty: derived from APERAG_API_KEYS (aperag.console.security).
    console_session_secret: str = ""
    console_session_hours: int = 12
    api_host: str = "0.0.0.0"
    api_port: int = 8000

    task_max_retries: int = 5
    task_retry_backoff_max: int = 300
    reconcile_interval_seconds: int = 60
    stuck_after_seconds: int = 900
    # A task taken by a worker that died without acknowledging it (SIGKILL, OOM, a grace period run out)
    # goes back to the queue this long after it was taken. Longer than the longest task: a task still
    # running after it is delivered again (the document's lock makes the second delivery skip it).
    broker_visibility_timeout_seconds: int = 3600
    worker_metrics_port: int = 0
    # Health endpoints of the worker and beat processes (the API serves its own on APERAG_PORT).
    health_port: int = 8001

    # Chat model (aperag.llm): an OpenAI-compatible endpoint. Empty base URL or model: none configured
    # (graph extraction then uses the offline extractor).
    llm_api_base: str = ""
    llm_api_key: str = ""
    llm_model: str = ""
    llm_timeout_seconds: float = 60.0
    llm_max_retries: int = 4
    llm_retry_backoff_max: float = 30.0
    # Chat (aperag.chat): tokens of retrieved sources in the model's context, tokens of earlier turns
    # kept, and chunks retrieved per question. Counted with the embedding tokenizer (an estimate).
    chat_context_tokens: int = 3000
    chat_history_tokens: int = 1000
    chat_top_k: int = 8

    # Knowledge graph (aperag.graph): built after each document's chunks are indexed.
    graph_enabled: bool = True
    graph_extraction_batch: int = 4
    # Graph-building tasks of one collection running at once, across all workers (each makes its model
    # calls one after another): the per-collection limit on concurrent extraction calls.
    graph_extraction_concurrency: int = 2

    embedded_pg_data_dir: str = ""
    # After SIGTERM: how long open requests, then the running indexing batch, may take (each).
    shutdown_grace_seconds: int = 10

    @property
    def database_configured(self) -> bool:
        return bool(self.postgres_host or self.database_url_override)

    @property
    def database_url(self) -> str:
        if not self.database_configured:
            raise ConfigError("POSTGRES_HOST is not set")
        if self.database_url_override:
            return _sqlalchemy_postgres_url(self.database_url_override)
        auth = quote(self.postgres_user, safe="")
        if self.postgres_password:
            auth += ":" + quote(self.postgres_password, safe="")
        query = f"?sslmode={quote(self.postgres_sslmode, safe='')}" if self.postgres_sslmode else ""
        return (
            f"postgresql+psycopg://{auth}@{self.postgres_host}:{self.postgres_port}/"
            f"{quote(self.postgres_db, safe='')}{query}"
        )

    @property
    def redis_configured(self) -> bool:
        return bool(self.redis_host or self.redis_url_override)

    @property
    def redis_url(self) -> str:
        if self.redis_url_override:
            return self.redis_url_override
        auth = ""
        if self.redis_user or self.redis_password:
            auth = f"{quote(self.redis_user, safe='')}:{quote(self.redis_password, safe='')}@"
        scheme = "rediss" if self.redis_ssl else "redis"
        return f"{scheme}://{auth}{self.redis_host}:{self.redis_port}/{self.redis_db}"

    @property
    def es_url(self) -> str:
        return self.es_url_override or f"{self.es_protocol}://{self.es_host_name}:{self.es_port}"

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    @property
    def object_store_root(self) -> Path:
        return Path(self.object_store_local_root_dir)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read settings from `env` (default: os.environ), validating choices and numbers."""
    e: Mapping[str, str] = os.environ if env is None else env
    chunk_size = _get_int(e, "CHUNK_SIZE", 200)
    overlap = _get_int(e, "CHUNK_OVERLAP_SIZE", 20)
    if chunk_size < 16:
        raise ConfigError("CHUNK_SIZE must be at least 16 tokens")
    if not 0 <= overlap < chunk_size:
        raise ConfigError("CHUNK_OVERLAP_SIZE must be >= 0 and smaller than CHUNK_SIZE")
    keys = tuple(k.strip() for k in _get(e, "APERAG_API_KEYS").split(",") if k.strip())
    backend = _get_choice(e, "EMBEDDING_BACKEND", "local", ("local", "openai"))
    model = _get(e, "EMBEDDING_MODEL", "all-MiniLM-L6-v2") or "all-MiniLM-L6-v2"
    # Any model name goes to an OpenAI-compatible endpoint; the local backend has these.
    if backend == "local" and model not in LOCAL_EMBEDDING_MODELS:
        raise ConfigError(
            f"EMBEDDING_MODEL must be one of {', '.join(LOCAL_EMBEDDING_MODELS)} with EMBEDDING_BACKEND=local,"
            f" got {model!r}"
        )
    query_batch = _get_int(e, "QUERY_EMBEDDING_BATCH", 64)
    if query_batch < 0:
        raise ConfigError("QUERY_EMBEDDING_BATCH must be >= 0")
    return Settings(
        postgres_host=_get(e, "POSTGRES_HOST"),
        postgres_port=_get_int(e, "POSTGRES_PORT", 5432),
        postgres_db=_get(e, "POSTGRES_DB", "aperag") or "aperag",
        postgres_user=_get(e, "POSTGRES_USER", "postgres") or "postgres",
        postgres_password=_get(e, "POSTGRES_PASSWORD"),
        postgres_sslmode=_get(e, "POSTGRES_SSLMODE"),
        database_url_override=_get(e, "DATABASE_URL"),
        redis_host=_get(e, "REDIS_HOST"),
        redis_port=_get_int(e, "REDIS_PORT", 6379),
        redis_user=_get(e, "REDIS_USER"),
        redis_password=_get(e, "REDIS_PASSWORD"),
        redis_db=_get_int(e, "REDIS_DB", 0),
        redis_ssl=_get_bool(e, "REDIS_SSL", False),
        redis_url_override=_get(e, "REDIS_URL"),
        vector_db_type=_get_choice(e, "VECTOR_DB_TYPE", "pgvector", ("pgvector", "qdrant")),
        qdrant_url=_get(e, "QDRANT_URL"),
        qdrant_api_key=_get(e, "QDRANT_API_KEY"),
        qdrant_path=_get(e, "QDRANT_PATH", ":memory:") or ":memory:",
        qdrant_collection=_get(e, "QDRANT_COLLECTION", "aperag_chunks") or "aperag_chunks",
        fulltext_type=_get_choice(e, "FULLTEXT_TYPE", "postgres", ("postgres", "elasticsearch")),
        es_host_name=_get(e, "ES_HOST_NAME", "127.0.0.1") or "127.0.0.1",
        es_port=_get_int(e, "ES_PORT", 9200),
        es_protocol=_get_choice(e, "ES_PROTOCOL", "http", ("http", "https")),
        es_user=_get(e, "ES_USER"),
        es_password=_get(e, "ES_PASSWORD"),
        es_index=_get(e, "ES_INDEX", "aperag_chunks") or "aperag_chunks",
        es_url_override=_get(e, "ES_URL"),
        object_store_type=_get_choice(e, "OBJECT_STORE_TYPE", "local", ("local", "s3")),
        object_store_local_root_dir=_get(e, "OBJECT_STORE_LOCAL_ROOT_DIR", "/data/objects")
        or "/data/objects",
        object_store_s3_endpoint=_get(e, "OBJECT_STORE_S3_ENDPOINT"),
        object_store_s3_region=_get(e, "OBJECT_STORE_S3_REGION"),
        object_store_s3_access_key=_get(e, "OBJECT_STORE_S3_ACCESS_KEY"),
        object_store_s3_secret_key=_get(e, "OBJECT_STORE_S3_SECRET_KEY"),
        object_store_s3_bucket=_get(e, "OBJECT_STORE_S3_BUCKET", "aperag") or "aperag",
        object_store_s3_prefix_path=_get(e, "OBJECT_STORE_S3_PREFIX_PATH"),
        object_store_s3_use_path_style=_get_bool(e, "OBJECT_STORE_S3_USE_PATH_STYLE", True),
        embedding_backend=backend,
        embedding_model=model,
        embedding_api_base=_get(e, "EMBEDDING_API_BASE"),
        embedding_api_key=_get(e, "EMBEDDING_API_KEY"),
        embedding_dimension=_get_int(e, "EMBEDDING_DIMENSION", 384),
        embedding_batch_size=_get_int(e, "EMBEDDING_BATCH_SIZE", 32),
        query_embedding_batch=query_batch,
        embedding_threads=_get_int(e, "EMBEDDING_THREADS", 1),
        chunk_size=chunk_size,
        chunk_overlap_size=overlap,
        index_batch_size=_get_int(e, "INDEX_BATCH_SIZE", 256),
        ingest_batch_documents=_get_positive_int(e, "INGEST_BATCH_DOCUMENTS", 16),
        max_upload_bytes=_get_int(e, "MAX_UPLOAD_BYTES", 20 * 1024 * 1024),
        max_document_pages=_get_positive_int(e, "MAX_DOCUMENT_PAGES", 2000),
        max_document_unpacked_bytes=_get_positive_int(e, "MAX_DOCUMENT_UNPACKED_BYTES", 200 * 1024 * 1024),
        max_document_chars=_get_positive_int(e, "MAX_DOCUMENT_CHARS", 5_000_000),
        api_keys=keys,
        console_enabled=_get_bool(e, "APERAG_CONSOLE_ENABLED", True),
        console_session_secret=_get(e, "APERAG_CONSOLE_SESSION_SECRET"),
        console_session_hours=_get_positive_int(e, "APERAG_CONSOLE_SESSION_HOURS", 12),
        api_host=_get(e, "APERAG_HOST", "0.0.0.0") or "0.0.0.0",
        api_port=_get_int(e, "APERAG_PORT", 8000),
        task_max_retries=_get_int(e, "TASK_MAX_RETRIES", 5),
        task_retry_backoff_max=_get_int(e, "TASK_RETRY_BACKOFF_MAX", 300),
        reconcile_interval_seconds=_get_int(e, "RECONCILE_INTERVAL_SECONDS", 60),
        stuck_after_seconds=_get_int(e, "STUCK_AFTER_SECONDS", 900),
        broker_visibility_timeout_seconds=_get_positive_int(e, "BROKER_VISIBILITY_TIMEOUT_SECONDS", 3600),
        worker_metrics_port=_get_int(e, "WORKER_METRICS_PORT", 0),
        health_port=_get_int(e, "HEALTH_PORT", 8001),
        llm_api_base=_get(e, "LLM_API_BASE"),
        llm_api_key=_get(e, "LLM_API_KEY"),
        llm_model=_get(e, "LLM_MODEL"),
        llm_timeout_seconds=_get_positive_float(e, "LLM_TIMEOUT_SECONDS", 60.0),
        llm_max_retries=_get_non_negative_int(e, "LLM_MAX_RETRIES", 4),
        llm_retry_backoff_max=_get_positive_float(e, "LLM_RETRY_BACKOFF_MAX", 30.0),
        chat_context_tokens=_get_positive_int(e, "CHAT_CONTEXT_TOKENS", 3000),
        chat_history_tokens=_get_non_negative_int(e, "CHAT_HISTORY_TOKENS", 1000),
        chat_top_k=_get_positive_int(e, "CHAT_TOP_K", 8),
        graph_enabled=_get_bool(e, "GRAPH_ENABLED", True),
        graph_extraction_batch=_get_positive_int(e, "GRAPH_EXTRACTION_BATCH", 4),
        graph_extraction_concurrency=_get_positive_int(e, "GRAPH_EXTRACTION_CONCURRENCY", 2),
        embedded_pg_data_dir=_get(e, "EMBEDDED_PG_DATA_DIR"),
        shutdown_grace_seconds=_get_positive_int(e, "SHUTDOWN_GRACE_SECONDS", 10),
        db_pool_size=_get_positive_int(e, "DB_POOL_SIZE", 20),
    )
