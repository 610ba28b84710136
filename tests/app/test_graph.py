"""The knowledge graph on real PostgreSQL: offline extraction, merging across documents, deletion,
the graph search mode and endpoint, migration 0004 up and down, and model extraction through a real
Celery worker against the scripted OpenAI-compatible server (429, 500, slow answers, malformed JSON)."""

from __future__ import annotations

import io
import json
import re
import subprocess
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import text

from aperag import migrate, services
from aperag.api.app import create_app
from aperag.context import AppContext
from aperag.graph.build import build_document_graph
from aperag.graph.offline import extract_text
from aperag.ingest.dispatch import CeleryDispatcher
from aperag.ingest.pipeline import index_document
from aperag.search import search
from tests.app.conftest import settings_from, wait_until
from tests.scripted_llm import Fail, Malformed, Reply, Request, Rule, ScriptedLLM, Step

POSTGRES = "PostgreSQL stores rows with MVCC. The VACUUM command in PostgreSQL removes dead tuples."
REDIS = "Redis keeps data in memory. Redis can persist with AOF and RDB snapshots; PostgreSQL cannot replace it."


def _ingest(ctx: AppContext, collection: str, docs: dict[str, str]) -> dict[str, str]:
    if collection not in {c.name for c in services.list_collections(ctx)}:
        services.create_collection(ctx, collection)
    ids = {}
    for name, body in docs.items():
        doc = services.upload_document(ctx, collection, name, None, body.encode()).document
        assert index_document(ctx, doc.id, final_attempt=True) == "ready"
        assert build_document_graph(ctx, doc.id) == "ready"
        ids[name] = doc.id
    return ids


def _entities(ctx: AppContext) -> dict[str, str]:
    with ctx.sessions() as session:
        return dict(session.execute(text("SELECT name_key, description FROM graph_entities")).all())


def test_offline_extractor_is_deterministic_and_finds_technical_names() -> None:
    graph = extract_text(POSTGRES)
    assert graph == extract_text(POSTGRES)
    names = {e.name for e in graph.entities}
    assert {"PostgreSQL", "MVCC", "VACUUM"} <= names
    assert "The" not in names
    pairs = {frozenset((r.source, r.target)) for r in graph.relations}
    assert frozenset(("PostgreSQL", "VACUUM")) in pairs


def test_graph_merges_across_documents_and_deletion_removes_only_its_support(
    app_env_factory: Callable[..., dict[str, str]], embedder_warm: None
) -> None:
    ctx = AppContext(settings=settings_from(app_env_factory()))
    ids = _ingest(ctx, "g", {"pg.txt": POSTGRES, "redis.txt": REDIS})
    entities = _entities(ctx)
    assert {"postgresql", "mvcc", "vacuum", "redis", "aof", "rdb"} <= set(entities)
    # PostgreSQL is named by both documents: one entity, both descriptions merged.
    assert "MVCC" in entities["postgresql"] and "replace it" in entities["postgresql"]
    with ctx.sessions() as session:
        assert session.execute(text("SELECT count(DISTINCT document_id) FROM graph_entity_mentions m"
                                    " JOIN graph_entities e ON e.id = m.entity_id WHERE e.name_key = 'postgresql'")).scalar() == 2  # fmt: skip  # noqa: E501
    collection = services.get_collection(ctx, "g")
    found = search(ctx, collection.id, "VACUUM dead tuples", "graph", 5).results
    assert found and found[0].document_id == ids["pg.txt"] and found[0].graph_rank == 1
    hybrid = search(ctx, collection.id, "VACUUM dead tuples", "hybrid", 5, include_graph=True).results
    assert hybrid[0].document_id == ids["pg.txt"] and hybrid[0].graph_rank is not None

    services.delete_document(ctx, "g", ids["redis.txt"])
    after = _entities(ctx)
    assert "redis" not in after and "aof" not in after  # only the deleted document supported them
    assert "postgresql" in after and "replace it" not in after["postgresql"]  # its part of the merge is gone
    with ctx.sessions() as session:
        orphans = session.execute(text(
            "SELECT count(*) FROM graph_relations r WHERE NOT EXISTS"
            " (SELECT 1 FROM graph_relation_mentions m WHERE m.relation_id = r.id)")).scalar()  # fmt: skip
    assert orphans == 0


def test_graph_endpoint_pages_and_filters_by_label(
    app_env_factory: Callable[..., dict[str, str]], embedder_warm: None
) -> None:
    ctx = AppContext(settings=settings_from(app_env_factory()))
    _ingest(ctx, "g", {"pg.txt": POSTGRES, "redis.txt": REDIS})
    with TestClient(create_app(ctx)) as client:
        first = client.get("/api/v1/collections/g/graph", params={"limit": 3}).json()
        assert len(first["nodes"]) == 3 and first["next_offset"] == 3 and first["total_nodes"] > 3
        rest = client.get("/api/v1/collections/g/graph", params={"limit": 1000, "offset": 3}).json()
        assert rest["next_offset"] is None
        seen = [n["id"] for n in first["nodes"] + rest["nodes"]]
        assert len(seen) == len(set(seen)) == first["total_nodes"]
        everything = client.get("/api/v1/collections/g/graph", params={"limit": 1000}).json()
        node_ids = {n["id"] for n in everything["nodes"]}
        assert everything["edges"] and all({e["source"], e["target"]} <= node_ids for e in everything["edges"])
        acronyms = client.get("/api/v1/collections/g/graph", params={"label": "acronym", "limit": 1000}).json()
        assert acronyms["nodes"] and {n["label"] for n in acronyms["nodes"]} == {"acronym"}
        assert client.get("/api/v1/collections/missing/graph").status_code == 404
        assert client.get("/api/v1/collections/g/graph", params={"limit": 0}).status_code == 422
        result = client.post("/api/v1/collections/g/search", json={"query": "Redis AOF", "mode": "graph"})
        assert result.status_code == 200 and result.json()["results"][0]["filename"] == "redis.txt"
        # The response says what the graph matched: the entities the query names (score 1), then their
        # relations, with names rather than ids.
        matched = result.json()["graph"]
        named = {e["name"]: e["score"] for e in matched["entities"]}
        assert named.get("Redis") == 1.0 and named.get("AOF") == 1.0
        assert matched["relations"] and all(r["description"] for r in matched["relations"])
        assert any({r["source"], r["target"]} & {"Redis", "AOF"} for r in matched["relations"])
        plain = client.post("/api/v1/collections/g/search", json={"query": "Redis AOF", "mode": "hybrid"}).json()
        assert plain["graph"] is None
        fused = client.post("/api/v1/collections/g/search",
                            json={"query": "Redis AOF", "mode": "hybrid", "include_graph": True}).json()  # fmt: skip
        assert "Redis" in {e["name"] for e in fused["graph"]["entities"]}


def test_migration_0004_up_and_down(app_env_factory: Callable[..., dict[str, str]]) -> None:
    settings = settings_from(app_env_factory())
    url = settings.database_url
    head = migrate.heads()  # 0004, or a later revision on top of it (0005: chat history)
    assert migrate.current(url)["current"] == head
    migrate.downgrade(url, "0003")
    ctx = AppContext(settings=settings)
    with ctx.sessions() as session:
        tables = set(session.execute(text("SELECT tablename FROM pg_tables WHERE tablename LIKE 'graph_%'")).scalars())
        columns_sql = "SELECT column_name FROM information_schema.columns WHERE table_name = 'documents'"
        columns = set(session.execute(text(columns_sql)).scalars())
    assert tables == set() and not any(c.startswith("graph_") for c in columns)
    migrate.upgrade(url)
    assert migrate.current(url)["current"] == head


# --- model extraction through a real worker ---------------------------------------------------------

CHUNK = re.compile(r"### chunk (\d+)\n(.*?)(?=\n\n### chunk |\Z)", re.S)


def answer_from_text(request: Request) -> Step:
    """A deterministic 'model': the offline extractor's graph of each chunk of the prompt, as JSON."""
    chunks = {n: extract_text(body).to_json() for n, body in CHUNK.findall(request.text)}
    return Reply(json.dumps({"chunks": chunks}))


def test_model_extraction_through_worker_survives_429_500_slow_and_malformed_answers(
    app_env_factory: Callable[..., dict[str, str]], redis_port: int, embedder_warm: None,
    worker_process: Callable[[dict[str, str]], subprocess.Popen[bytes]],
) -> None:  # fmt: skip
    with ScriptedLLM(default=answer_from_text) as llm:
        # Each document is one chunk; its prompt holds a marker word the rules key on.
        llm.add(Rule("Throttled", [Fail(429, retry_after="1"), Fail(500)]))
        llm.add(Rule("Sluggish", [Reply("{}", delay=3.0)]))
        llm.add(Rule("Garbled", [Malformed()]))
        for rule in llm.rules:  # after the faults, the real answer
            rule.steps = [*rule.steps, *([] if rule.contains == "Garbled" else [answer_from_text])]
        env = app_env_factory(
            REDIS_HOST="127.0.0.1", REDIS_PORT=str(redis_port), REDIS_DB="5", GRAPH_EXTRACTION_BATCH="1",
            LLM_TIMEOUT_SECONDS="1.5", LLM_MAX_RETRIES="3", LLM_RETRY_BACKOFF_MAX="1", **llm.env(),
        )  # fmt: skip
        worker_process(env)
        settings = settings_from(env)
        ctx = AppContext(settings=settings, dispatcher=CeleryDispatcher(settings.redis_url))
        docs = {
            "a.txt": "Throttled answers from Kafka reach ZooKeeper slowly.",
            "b.txt": "Sluggish replies about the NGINX proxy and HAProxy.",
            "c.txt": "Garbled output mentions OpenSearch and Lucene.",
            "d.txt": "Plain text about PostgreSQL and MVCC.",
        }
        with TestClient(create_app(ctx)) as client:
            client.post("/api/v1/collections", json={"name": "kb"})
            for name, body in docs.items():
                client.post("/api/v1/collections/kb/documents", files={"file": (name, io.BytesIO(body.encode()))})

            def graphs_done() -> bool:
                rows = client.get("/api/v1/collections/kb/documents").json()
                return len(rows) == 4 and all(r["graph_status"] in ("ready", "partial", "failed") for r in rows)

            wait_until(graphs_done, 180, "the worker to build every document's graph", interval=0.3)
            rows = {r["filename"]: r for r in client.get("/api/v1/collections/kb/documents").json()}
        assert {n: (r["status"], r["graph_status"], r["graph_failed_chunks"]) for n, r in rows.items()} == {
            "a.txt": ("ready", "ready", 0),
            "b.txt": ("ready", "ready", 0),
            "c.txt": ("ready", "partial", 1),
            "d.txt": ("ready", "ready", 0),
        }
        assert "1 of 1 chunks" in rows["c.txt"]["graph_error"]
        # 429 then 500 then the answer: three calls; the slow answer timed out once, then answered.
        assert llm.calls("Throttled") == 3 and llm.calls("Sluggish") == 2 and llm.calls("Garbled") == 1
        names = set(_entities(ctx))
        assert {"kafka", "zookeeper", "nginx", "haproxy", "postgresql"} <= names and "opensearch" not in names
        # The cache: re-indexing a document costs no model call.
        before = len(llm.requests)
        client2 = TestClient(create_app(ctx))
        client2.post(f"/api/v1/collections/kb/documents/{rows['d.txt']['id']}/reindex")

        def rebuilt() -> bool:
            row = client2.get(f"/api/v1/collections/kb/documents/{rows['d.txt']['id']}").json()
            return (
                row["status"] == "ready"
                and row["graph_status"] == "ready"
                and row["updated_at"] != rows["d.txt"]["updated_at"]
            )

        wait_until(rebuilt, 120, "the re-indexed document's graph", interval=0.3)
        assert len(llm.requests) == before


# --- backfill: graphs of documents indexed before revision 0004, and lost builds -------------------


def test_reconcile_backfills_graphs_never_built_or_lost_and_leaves_live_builds_alone(
    app_env_factory: Callable[..., dict[str, str]], embedder_warm: None
) -> None:
    from aperag.ingest.dispatch import InProcessDispatcher
    from aperag.ingest.pipeline import reconcile

    ctx = AppContext(settings=settings_from(app_env_factory()))
    services.create_collection(ctx, "g")
    ids = {}
    for name, body in {"pg.txt": POSTGRES, "redis.txt": REDIS, "busy.txt": "Kafka keeps an append-only log."}.items():
        doc = services.upload_document(ctx, "g", name, None, body.encode()).document
        assert index_document(ctx, doc.id, final_attempt=True) == "ready"  # no dispatcher: no graph queued
        ids[name] = doc.id
    with ctx.sessions.begin() as session:
        # pg.txt: ready an hour before the upgrade added the graph (what migration 0004 leaves: NULL).
        session.execute(text("UPDATE documents SET graph_status = NULL,"
                             " status_changed_at = now() - interval '1 hour' WHERE id = :d"), {"d": ids["pg.txt"]})
        # redis.txt: its build was lost (a worker killed mid-build an hour ago).
        session.execute(text("UPDATE documents SET graph_status = 'building',"
                             " updated_at = now() - interval '1 hour' WHERE id = :d"), {"d": ids["redis.txt"]})
        # busy.txt: being built right now by someone else.
        session.execute(text("UPDATE documents SET graph_status = 'building', updated_at = now(),"
                             " status_changed_at = now() - interval '1 hour' WHERE id = :d"), {"d": ids["busy.txt"]})  # fmt: skip  # noqa: E501
    dispatcher = InProcessDispatcher(ctx, max_retries=1)
    ctx.dispatcher = dispatcher
    try:
        result = reconcile(ctx, exclude_graphs=dispatcher.graph_tracked())
        assert result["graph_requeued"] == 2 and result["requeued"] == 0

        def status(name: str) -> str | None:
            with ctx.sessions() as session:
                return session.execute(text("SELECT graph_status FROM documents WHERE id = :d"),
                                       {"d": ids[name]}).scalar()  # fmt: skip

        wait_until(lambda: status("pg.txt") == status("redis.txt") == "ready", 120, "backfilled graphs")
        assert status("busy.txt") == "building"
        collection = services.get_collection(ctx, "g")
        found = search(ctx, collection.id, "VACUUM dead tuples", "graph", 5).results
        assert found and found[0].document_id == ids["pg.txt"]
        # Nothing left to backfill; the live build is still not touched.
        assert reconcile(ctx, exclude_graphs=dispatcher.graph_tracked())["graph_requeued"] == 0
        assert status("busy.txt") == "building"
    finally:
        assert dispatcher.stop(grace_seconds=30)


def test_graph_vector_lookups_use_the_hnsw_indexes(
    app_env_factory: Callable[..., dict[str, str]], embedder_warm: None
) -> None:
    from sqlalchemy import event

    from aperag.db.session import get_engine
    from aperag.graph.retrieval import graph_search

    ctx = AppContext(settings=settings_from(app_env_factory()))
    _ingest(ctx, "g", {"pg.txt": POSTGRES, "redis.txt": REDIS})
    ctx.ensure_store_schemas()  # what `aperag migrate` and an embedded start run; idempotent
    dim = ctx.settings.embedding_dimension
    with ctx.sessions() as session:
        names = set(session.execute(text("SELECT indexname FROM pg_indexes WHERE indexname LIKE '%hnsw%'")).scalars())
    assert {f"ix_graph_entities_hnsw_{dim}", f"ix_graph_relations_hnsw_{dim}"} <= names
    # The statements graph_search really runs, planned with the alternatives discouraged (the tables
    # are tiny here, a scan and a sort would win): the nearest-neighbour ones must match the indexes
    # (expression and partial predicate), or no setting makes the planner use them.
    seen: list[tuple[str, object]] = []
    engine = get_engine(ctx.settings.database_url)

    def capture(conn: object, cursor: object, statement: str, params: object, *args: object) -> None:
        if "<=>" in statement:
            seen.append((statement, params))

    collection = services.get_collection(ctx, "g")
    event.listen(engine, "before_cursor_execute", capture)
    try:
        with ctx.sessions() as session:
            graph_search(session, collection.id, "VACUUM dead tuples", ctx.embedder.embed_queries(["VACUUM"])[0], 10)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    assert len(seen) == 2
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            cursor.execute(f"SET {setting} = off")
        plans = []
        for statement, params in seen:
            cursor.execute("EXPLAIN " + statement, params)
            plans.append(" ".join(r[0] for r in cursor.fetchall()))
    finally:
        raw.close()
    assert f"ix_graph_entities_hnsw_{dim}" in plans[0] and f"ix_graph_relations_hnsw_{dim}" in plans[1], plans
