"""The graph page on the real app: a graph built by the offline extractor from indexed documents, drawn
as inline SVG with the same entities and relations as tables, the name filter, the empty graph's
explanation, and escaping."""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import text

from aperag import services
from aperag.console.graph_layout import layout
from aperag.context import AppContext
from aperag.graph.build import build_document_graph
from aperag.ingest.pipeline import index_document
from tests.app.console.conftest import sign_in

POSTGRES = "PostgreSQL stores rows with MVCC. The VACUUM command in PostgreSQL removes dead tuples."
REDIS = "Redis keeps data in memory. Redis can persist with AOF and RDB snapshots; PostgreSQL cannot replace it."


def _console(console_factory: Callable[..., TestClient], **env: str) -> tuple[TestClient, AppContext]:
    client = console_factory(**env)
    sign_in(client)
    ctx: AppContext = client.app.state.ctx  # type: ignore[attr-defined]
    ctx.dispatcher = None  # the tests index and build synchronously
    return client, ctx


def _built(ctx: AppContext, name: str, docs: dict[str, str]) -> str:
    collection = services.create_collection(ctx, name)
    for filename, body in docs.items():
        doc = services.upload_document(ctx, name, filename, None, body.encode()).document
        assert index_document(ctx, doc.id, final_attempt=True) == "ready"
        assert build_document_graph(ctx, doc.id) == "ready"
    return collection.id


def _table_rows(page: str, heading: str) -> list[str]:
    section = page.split(f'id="{heading}"', 1)[1].split("</section>", 1)[0]
    return re.findall(r"<tr[ >].*?</tr>", section.split("<tbody>", 1)[1], re.S)


def test_a_built_graph_is_drawn_listed_and_filtered(console_factory: Callable[..., TestClient]) -> None:
    client, ctx = _console(console_factory)
    cid = _built(ctx, "g", {"pg.txt": POSTGRES, "redis.txt": REDIS})
    url = f"/console/collections/{cid}/graph"
    response = client.get(url)
    assert response.status_code == 200
    page = response.text
    assert '<link rel="stylesheet" href="/console/static/graph.css">' in page
    assert client.get("/console/static/graph.css").status_code == 200
    assert 'aria-current="page">Graph</a>' in page
    assert " style=" not in page and "<script" not in page.split("</head>", 1)[1]
    # The picture: one circle per listed entity, one line per listed relation, each with a tooltip.
    assert '<svg class="graph" viewBox="0 0 800 600" role="img"' in page
    entities = _table_rows(page, "entities-heading")
    relations = _table_rows(page, "relations-heading")
    assert len(entities) == page.count("<circle class=\"type-") - page.count('class="swatch"')
    assert len(relations) == page.count('<line class="edge"') > 0
    assert re.search(r'<line class="edge" x1="[\d.]+" y1="[\d.]+" x2="[\d.]+" y2="[\d.]+"><title>', page)
    assert re.search(r"<title>PostgreSQL \([^)]*, \d+ relations\)", page)
    names = {re.search(r'<th scope="row"><a href="[^"]*">([^<]+)</a>', row).group(1) for row in entities}  # type: ignore[union-attr]
    assert {"PostgreSQL", "MVCC", "VACUUM", "Redis", "AOF", "RDB"} <= names
    # The table: name, type and degree, most connected first; PostgreSQL is named by both documents.
    degrees = [int(re.findall(r'<td class="number">(\d+)</td>', row)[0]) for row in entities]
    assert degrees == sorted(degrees, reverse=True)
    assert "PostgreSQL" in entities[0]
    assert '<th scope="col">Source</th><th scope="col">Relation</th><th scope="col">Target</th>' in page
    assert '<label for="graph-q">Filter entities by name</label>' in page
    # The layout is computed on the server, the same every time.
    assert client.get(url).text == page

    # The filter: entities whose name contains it, and their neighbours, the matches first.
    filtered = client.get(url, params={"q": "redis"}).text
    rows = _table_rows(filtered, "entities-heading")
    shown = {re.search(r'<th scope="row"><a href="[^"]*">([^<]+)</a>', row).group(1) for row in rows}  # type: ignore[union-attr]
    assert "Redis" in shown and {"AOF", "RDB"} <= shown and "VACUUM" not in shown and "MVCC" not in shown
    assert 'class="matched"' in rows[0] and ">Redis</a>" in rows[0]
    assert "1 entity named like <q>redis</q>" in filtered and 'value="redis"' in filtered
    assert f'href="{url}">Show all</a>' in filtered
    assert f'href="{url}?q=Redis"' in filtered  # a node or a name filters to its neighbourhood
    nothing = client.get(url, params={"q": "kafka"})
    assert nothing.status_code == 200 and "No entity's name contains <q>kafka</q>" in nothing.text
    assert "<svg class=\"graph\"" not in nothing.text
    wildcard = client.get(url, params={"q": "%"}).text  # a LIKE wildcard is a plain character
    assert "No entity's name contains" in wildcard
    too_long = client.get(url, params={"q": "x" * 201})
    assert too_long.status_code == 400 and 'role="alert"' in too_long.text and "too long" in too_long.text


def test_an_empty_graph_says_why(console_factory: Callable[..., TestClient]) -> None:
    client, ctx = _console(console_factory)
    empty = services.create_collection(ctx, "empty")
    page = client.get(f"/console/collections/{empty.id}/graph").text
    assert "No knowledge graph yet" in page and "Upload documents" in page and "<svg class=\"graph\"" not in page

    waiting = services.create_collection(ctx, "waiting")
    first = services.upload_document(ctx, "waiting", "pg.txt", None, POSTGRES.encode()).document
    services.upload_document(ctx, "waiting", "redis.txt", None, REDIS.encode())
    assert index_document(ctx, first.id, final_attempt=True) == "ready"  # indexed, its graph not built yet
    page = client.get(f"/console/collections/{waiting.id}/graph").text
    assert "The graph is built after documents are indexed" in page
    assert "2 documents of 2 are still being indexed or added to the graph" in page
    build_document_graph(ctx, first.id)
    built = client.get(f"/console/collections/{waiting.id}/graph").text
    assert '<svg class="graph"' in built and "1 document is still being indexed or added to the graph" in built

    missing = client.get("/console/collections/nope/graph")
    assert missing.status_code == 404 and 'role="alert"' in missing.text


def test_with_the_graph_turned_off_the_page_says_so(console_factory: Callable[..., TestClient]) -> None:
    client, ctx = _console(console_factory, GRAPH_ENABLED="false")
    collection = services.create_collection(ctx, "off")
    page = client.get(f"/console/collections/{collection.id}/graph").text
    assert "GRAPH_ENABLED=false" in page


def test_entity_names_are_escaped(console_factory: Callable[..., TestClient]) -> None:
    client, ctx = _console(console_factory)
    cid = _built(ctx, "x", {"pg.txt": POSTGRES})
    evil = "<script>alert(1)</script>"
    with ctx.sessions.begin() as session:
        new_id = session.execute(
            text("INSERT INTO graph_entities (collection_id, name_key, name, entity_type, description)"
                 " VALUES (:c, 'evil', :n, '<b>type</b>', '\"><img src=x>') RETURNING id"),
            {"c": cid, "n": evil},
        ).scalar_one()  # fmt: skip
        first = text("SELECT min(id) FROM graph_entities WHERE collection_id = :c")
        other = session.execute(first, {"c": cid}).scalar()
        session.execute(
            text("INSERT INTO graph_relations (collection_id, source_id, target_id, keywords)"
                 " VALUES (:c, :a, :b, '<i>kw</i>')"),
            {"c": cid, "a": min(other, new_id), "b": max(other, new_id)},
        )  # fmt: skip
    for params in ({}, {"q": "<script>"}):
        page = client.get(f"/console/collections/{cid}/graph", params=params).text
        assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "<b>type</b>" not in page and "<i>kw</i>" not in page and '"><img' not in page
        assert "q=%3Cscript%3Ealert%281%29%3C/script%3E" in page  # the node's link, URL-encoded


def test_the_layout_is_deterministic_and_inside_the_canvas() -> None:
    edges = [(i, (i * 7 + 3) % 40) for i in range(40) if i != (i * 7 + 3) % 40]
    first = layout(40, edges, 800, 600, margin=48)
    assert first == layout(40, edges, 800, 600, margin=48)
    assert all(48 <= x <= 752 and 48 <= y <= 552 for x, y in first)
    assert len(set(first)) == 40  # no two nodes on the same spot
    assert layout(0, [], 800, 600) == [] and layout(1, [], 800, 600) == [(400.0, 300.0)]
