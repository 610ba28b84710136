"""`aperag` command line: serve, worker, beat, migrate, ingest, search."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from aperag.config import ConfigError, Settings, load_settings
from aperag.embedded_pg import (
    DataDirectoryInUse,
    EmbeddedInstance,
    EmbeddedPostgres,
    EmbeddedPostgresError,
    ServeLock,
    default_home,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

if TYPE_CHECKING:
    from aperag.migrate import Report

log = logging.getLogger("aperag")


class CommandError(RuntimeError):
    """A command cannot do what was asked (e.g. an unknown collection): one line, exit 1."""


def _require_database(settings: Settings) -> None:
    if not settings.database_configured:
        raise ConfigError("POSTGRES_HOST is not set: this command needs a configured database")


def _database_settings(settings: Settings) -> Settings:
    """Settings for a command that needs the database: the configured one, or else the database of
    the embedded `aperag serve` running on EMBEDDED_PG_DATA_DIR."""
    if settings.database_configured:
        return settings
    from aperag.embedded_pg import default_home, running_instance

    home = default_home(settings.embedded_pg_data_dir)
    instance = running_instance(home)
    if instance is None:
        raise ConfigError(
            f"POSTGRES_HOST is not set and no embedded `aperag serve` is running on {home} "
            "(start one, or set POSTGRES_HOST or EMBEDDED_PG_DATA_DIR)"
        )
    log.info(
        "using the embedded aperag serve (pid %d): PostgreSQL 127.0.0.1:%d, data in %s",
        instance.pid, instance.postgres_port, instance.home,
    )  # fmt: skip
    return replace(
        settings,
        postgres_host="127.0.0.1",
        postgres_port=instance.postgres_port,
        postgres_db=instance.database,
        postgres_user=instance.user,
        postgres_password="",
        vector_db_type="pgvector",
        fulltext_type="postgres",
        object_store_type="local",
        object_store_local_root_dir=instance.objects_dir,
    )


@dataclass
class _Embedded:
    """The embedded PostgreSQL of this `aperag serve`, and the lock that says it is ours."""

    server: EmbeddedPostgres
    lock: ServeLock
    home: Path

    def stop(self) -> None:
        try:
            self.server.stop()
        except EmbeddedPostgresError as exc:
            # Said in one line; the next start stops a server left running (see EmbeddedPostgres.start).
            log.error("could not stop the embedded PostgreSQL: %s", exc)
        finally:
            self.lock.release()


def _embedded_settings(settings: Settings) -> tuple[Settings, _Embedded]:
    """Start the embedded PostgreSQL (recovering one a killed run left behind) and return settings
    pointing at it. The caller publishes the instance once it knows the API address."""
    from aperag import migrate

    home = default_home(settings.embedded_pg_data_dir)
    lock = ServeLock(home)
    lock.acquire()
    try:
        server = EmbeddedPostgres(home / "pgdata", port=int(os.environ.get("EMBEDDED_PG_PORT", "0")) or None)
        server.start()
        server.create_database("aperag")
        objects = settings.object_store_local_root_dir
        if "OBJECT_STORE_LOCAL_ROOT_DIR" not in os.environ:
            objects = str(home / "objects")
        embedded = replace(
            settings,
            postgres_host="127.0.0.1",
            postgres_port=server.port,
            postgres_db="aperag",
            postgres_user=server.user,
            postgres_password="",
            vector_db_type="pgvector",
            fulltext_type="postgres",
            object_store_type="local",
            object_store_local_root_dir=objects,
        )
        # Embedded mode is the one place the app migrates itself: there is no operator Job.
        migrate.upgrade(embedded.database_url)
    except BaseException:
        lock.release()
        raise
    return embedded, _Embedded(server, lock, home)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from aperag.telemetry import setup_tracing

    setup_tracing("aperag-api")
    host = args.host or settings.api_host
    port = args.port or settings.api_port
    embedded: _Embedded | None = None
    if not settings.database_configured:
        settings, embedded = _embedded_settings(settings)
    try:
        app = _serving_app(settings, embedded, f"http://{host}:{port}")
        uvicorn.run(
            app, host=host, port=port, log_level="info",
            # Open connections get this long after SIGTERM before the shutdown hooks run regardless.
            timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        )  # fmt: skip
    finally:
        if embedded is not None:
            # Also when serving never started (e.g. the port is taken): never leave PostgreSQL behind.
            embedded.stop()
    return 0


def _serving_app(settings: Settings, embedded: _Embedded | None, api_url: str) -> FastAPI:
    from aperag.api.app import create_app
    from aperag.context import AppContext
    from aperag.ingest.dispatch import CeleryDispatcher, InProcessDispatcher
    from aperag.ingest.recovery import InProcessRecovery

    ctx = AppContext(settings=settings)
    # Run at shutdown in this order, each bounded: stop recovering, stop indexing (the running batch
    # finishes or is abandoned), stop PostgreSQL.
    hooks: list[Callable[[], None]] = []
    if settings.redis_configured and embedded is None:
        ctx.dispatcher = CeleryDispatcher(settings.redis_url)
    else:
        if embedded is not None:
            ctx.ensure_store_schemas()
        dispatcher = InProcessDispatcher(ctx, max_retries=settings.task_max_retries)
        ctx.dispatcher = dispatcher
        recovery = InProcessRecovery(ctx, dispatcher, sole_owner=embedded is not None)
        recovery.start()
        grace = settings.shutdown_grace_seconds

        def stop_indexing() -> None:
            recovery.stop()
            dispatcher.stop(grace_seconds=grace)

        hooks.append(stop_indexing)
    if embedded is not None:
        hooks.append(embedded.stop)
        embedded.lock.publish(
            EmbeddedInstance(
                pid=os.getpid(), home=str(embedded.home), postgres_port=embedded.server.port,
                database="aperag", user=embedded.server.user,
                objects_dir=settings.object_store_local_root_dir, api_url=api_url,
            )
        )  # fmt: skip
        log.info(
            "embedded mode: data directory %s, PostgreSQL on 127.0.0.1:%d, API on %s (in-process indexing)",
            embedded.home, embedded.server.port, api_url,
        )  # fmt: skip
    if not settings.auth_enabled:
        log.warning("APERAG_API_KEYS is empty: the API accepts requests without authentication")
    return create_app(ctx, on_shutdown=hooks)


def _start_health(settings: Settings, *, redis_ping: bool, database: bool, metrics: bool = False) -> None:
    """/health/live and /health/ready on HEALTH_PORT (0: off), for the operator's probes; with ``metrics``
    also /metrics (the worker's: what Prometheus scrapes, docs/observability.md)."""
    if not settings.health_port:
        return
    from aperag.health_server import Check, start_health_server

    checks: dict[str, Check] = {}
    if redis_ping:
        import redis

        broker = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        checks["redis"] = broker.ping
    if database:
        from sqlalchemy import create_engine, text

        from aperag.migrate import SchemaCheck

        engine = create_engine(settings.database_url, pool_pre_ping=True, pool_size=1, max_overflow=0)

        def database_check() -> None:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        checks["database"] = database_check
        # Not ready while the schema is behind this release (the migration Job has not run yet); ready
        # when it is ahead (a newer release migrated it during a rollout or before a rollback).
        checks["schema"] = SchemaCheck(lambda: engine)
    from aperag.telemetry import metrics_payload

    start_health_server(settings.api_host, settings.health_port, checks, metrics_payload if metrics else None)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    _require_database(settings)
    if not settings.redis_configured:
        raise ConfigError("REDIS_HOST is not set: the worker needs the Redis broker")
    from aperag.telemetry import setup_tracing, use_multiprocess_metrics

    # Before anything imports prometheus_client: the prefork pool's children count the ingestion.
    metrics_dir = use_multiprocess_metrics()
    from aperag.ingest.celery_app import PERIODIC_QUEUE, QUEUE, celery_app

    setup_tracing("aperag-worker")
    _start_health(settings, redis_ping=True, database=True, metrics=True)
    if settings.worker_metrics_port:
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
        start_http_server(settings.worker_metrics_port, registry=registry)
    queues = f"{QUEUE},{PERIODIC_QUEUE}"
    argv = ["worker", "--loglevel", args.loglevel, "-Q", queues, "--concurrency", str(args.concurrency)]
    if args.pool:
        argv += ["--pool", args.pool]
    celery_app.worker_main(argv)
    return 0


def cmd_beat(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.redis_configured:
        raise ConfigError("REDIS_HOST is not set: beat needs the Redis broker")
    from aperag.ingest.celery_app import celery_app

    _start_health(settings, redis_ping=True, database=False)
    # The schedule file must be on a writable path: the root filesystem is read-only in a cluster.
    celery_app.start(["beat", "--loglevel", args.loglevel, "--schedule", args.schedule])
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """``heads`` and ``current`` print JSON; ``upgrade`` and ``downgrade`` print one report (JSON, last
    line of stdout), write it to the termination-message file for the operator, and say what went wrong
    in one line on stderr: never a traceback (docs/app.md)."""
    from aperag import migrate

    if args.action == "heads":
        found = migrate.heads()
        print(json.dumps({"heads": found, "single": len(found) == 1}))
        return 0
    if args.action == "current":
        # Without POSTGRES_HOST: the database of the embedded `aperag serve` running here, if any (a
        # ConfigError, exit 2 with one line, when there is none either).
        print(migrate.current_json(_database_settings(settings).database_url))
        return 0
    action: migrate.Action = "upgrade" if args.action == "upgrade" else "downgrade"
    if action == "downgrade" and not args.revision:
        print("migrate: downgrade needs a revision (e.g. base or 0001)", file=sys.stderr)
        return 2
    target = args.revision or "head"
    if not settings.database_configured:
        report = migrate.Report(
            ok=False,
            action=action,
            target=target,
            heads=migrate.heads(),
            reason=migrate.NOT_CONFIGURED,
            message="POSTGRES_HOST (or DATABASE_URL) is not set: this command needs a configured database",
        )
    else:
        report = migrate.run(settings.database_url, action, target)
        if report.ok and action == "upgrade" and not args.skip_stores:
            report = _ensure_store_schemas(settings, report)
    migrate.write_report(report, args.report_file)
    print(report.to_json())
    if not report.ok:
        print(f"migrate: {report.reason}: {report.message}", file=sys.stderr)
    return report.exit_code


def _ensure_store_schemas(settings: Settings, report: Report) -> Report:
    """The vector and full-text store schemas, after the tables they index (idempotent)."""
    from aperag import migrate
    from aperag.context import AppContext
    from aperag.stores import StoreUnavailable

    try:
        AppContext(settings=settings).ensure_store_schemas()
    except StoreUnavailable as exc:
        report.ok, report.reason, report.message = False, migrate.DATABASE_UNAVAILABLE, str(exc)
    except Exception as exc:  # the schema is migrated; say clearly that the stores are not
        report.ok, report.reason = False, migrate.STORES_FAILED
        report.message = f"schema migrated, but the store schemas failed: {type(exc).__name__}: {exc}"
    return report


def _collect_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    if path.is_file():
        return [path]
    raise CommandError(f"{path} does not exist")


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    """Index files synchronously in this process (no queue), for scripts and first loads."""
    settings = _database_settings(settings)
    from aperag import services
    from aperag.context import AppContext
    from aperag.ingest.pipeline import index_document
    from aperag.parsing import UnparsableDocument, UnsupportedDocument

    ctx = AppContext(settings=settings)
    try:
        collection = services.get_collection(ctx, args.collection)
    except services.NotFound:
        collection = services.create_collection(ctx, args.collection)
    summary: list[dict[str, object]] = []
    for file in _collect_files(Path(args.path)):
        try:
            result = services.upload_document(ctx, collection.id, file.name, None, file.read_bytes())
        except (UnsupportedDocument, UnparsableDocument, services.InvalidInput, services.TooLarge) as exc:
            summary.append({"file": str(file), "status": "rejected", "error": str(exc)})
            continue
        status = index_document(ctx, result.document.id, final_attempt=True)
        doc = services.get_document(ctx, collection.id, result.document.id)
        summary.append(
            {
                "file": str(file),
                "document_id": doc.id,
                "status": status,
                "chunks": doc.chunk_count,
                "error": doc.error,
            }
        )
    print(json.dumps({"collection": collection.name, "documents": summary}, indent=2))
    return 0 if all(d["status"] in ("ready", "skipped") for d in summary) else 1


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    settings = _database_settings(settings)
    from pydantic import ValidationError

    from aperag import services
    from aperag.api.schemas import SearchRequest
    from aperag.context import AppContext
    from aperag.search import search

    try:
        SearchRequest(query=args.query, mode=args.mode, top_k=args.top_k)
    except ValidationError as exc:
        raise CommandError("; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())) from exc
    ctx = AppContext(settings=settings)
    try:
        collection = services.get_collection(ctx, args.collection)
    except services.NotFound as exc:
        raise CommandError(str(exc)) from exc
    found = search(ctx, collection.id, args.query, args.mode, args.top_k)
    print(
        json.dumps(
            {"results": [r.__dict__ for r in found.results], "timings_ms": found.timings_ms},
            indent=2,
            default=str,
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aperag", description="ApeRAG: retrieval over your documents")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP API (embedded PostgreSQL if POSTGRES_HOST is unset)")
    serve.add_argument("--host", default="")
    serve.add_argument("--port", type=int, default=0)
    serve.set_defaults(fn=cmd_serve)

    worker = sub.add_parser("worker", help="run a Celery ingestion worker")
    worker.add_argument("--concurrency", type=int, default=int(os.environ.get("WORKER_CONCURRENCY", "1")))
    worker.add_argument("--pool", default=os.environ.get("WORKER_POOL", ""))
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(fn=cmd_worker)

    beat = sub.add_parser("beat", help="run the periodic reconciler scheduler")
    beat.add_argument("--loglevel", default="INFO")
    beat.add_argument(
        "--schedule", default=os.environ.get("BEAT_SCHEDULE_FILE", "/tmp/aperag-celerybeat-schedule")
    )
    beat.set_defaults(fn=cmd_beat)

    mig = sub.add_parser("migrate", help="database schema migrations (under an advisory lock)")
    mig.add_argument("action", choices=["upgrade", "downgrade", "current", "heads"])
    mig.add_argument("revision", nargs="?", default="")
    mig.add_argument(
        "--skip-stores", action="store_true", help="upgrade: do not create vector/full-text schemas"
    )
    mig.add_argument(
        "--report-file",
        default=None,
        help="upgrade/downgrade: also write the JSON report here (default: $APERAG_MIGRATE_REPORT_FILE, "
        "else /dev/termination-log when it exists)",
    )
    mig.set_defaults(fn=cmd_migrate)

    ingest = sub.add_parser(
        "ingest", help="index a file or a directory into a collection (created if missing)"
    )
    ingest.add_argument("path")
    ingest.add_argument("--collection", required=True)
    ingest.set_defaults(fn=cmd_ingest)

    search = sub.add_parser("search", help="search a collection")
    search.add_argument("query")
    search.add_argument("--collection", required=True)
    search.add_argument("--mode", choices=["vector", "fulltext", "hybrid"], default="hybrid")
    search.add_argument("--top-k", type=int, default=5)
    search.set_defaults(fn=cmd_search)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    # Alembic announces each of its plugins at INFO on import: noise in every migrate run.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        result: int = args.fn(args, load_settings())
    except (ConfigError, DataDirectoryInUse) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except (CommandError, EmbeddedPostgresError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
