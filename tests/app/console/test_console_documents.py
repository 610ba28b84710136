"""The documents page on the real app: uploads (several at once, refused files with their reason), the
live table, failed documents, reindex, delete, the document view, collection settings and deletion."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient

from aperag import services
from aperag.context import AppContext
from tests.app.conftest import wait_until
from tests.app.console.conftest import csrf_of
from tests.app.corpus import DOCS

HTMX = {"HX-Request": "true"}
_ROW = re.compile(r'<tr data-status="([^"]+)" data-document-id="([0-9a-f]{32})"')
TRIGGER = 'hx-trigger="every 2s"'


def ctx_of(client: TestClient) -> AppContext:
    ctx: AppContext = client.app.state.ctx  # type: ignore[attr-defined]
    return ctx


def create_collection(client: TestClient, name: str, description: str = "") -> str:
    token = csrf_of(client.get("/console/").text)
    created = client.post(
        "/console/collections", data={"name": name, "description": description, "csrf_token": token},
        follow_redirects=False,
    )  # fmt: skip
    assert created.status_code == 303, created.text
    location: str = created.headers["location"]
    return location.rsplit("/", 1)[-1]


def upload(
    client: TestClient, cid: str, files: list[tuple[str, bytes]], htmx: bool = True, token: str | None = None
) -> httpx.Response:
    if token is None:
        token = csrf_of(client.get(f"/console/collections/{cid}").text)
    return client.post(
        f"/console/collections/{cid}/documents",
        data={"csrf_token": token},
        files=[("files", (name, data, "application/octet-stream")) for name, data in files],
        headers=HTMX if htmx else {},
    )


def table(client: TestClient, cid: str) -> str:
    response = client.get(f"/console/collections/{cid}/documents", headers=HTMX)
    assert response.status_code == 200, response.text
    return response.text


def rows(html: str) -> dict[str, str]:
    """document id -> status, from the table's rows."""
    return {doc_id: status for status, doc_id in _ROW.findall(html)}


def wait_statuses(client: TestClient, cid: str, final: frozenset[str] = frozenset({"ready", "failed"})) -> str:
    latest = ""

    def settled() -> bool:
        nonlocal latest
        latest = table(client, cid)
        found = rows(latest)
        return bool(found) and all(s in final for s in found.values())

    wait_until(settled, 120, "every document to reach a final status", interval=0.2)
    return latest


def post_action(client: TestClient, cid: str, doc_id: str, action: str, htmx: bool = True) -> httpx.Response:
    token = csrf_of(client.get(f"/console/collections/{cid}").text)
    return client.post(
        f"/console/collections/{cid}/documents/{doc_id}/{action}", data={"csrf_token": token},
        headers=HTMX if htmx else {}, follow_redirects=False,
    )  # fmt: skip


def test_page_has_the_upload_form_and_an_empty_table(console: TestClient) -> None:
    cid = create_collection(console, "kb", "Field notes")
    page = console.get(f"/console/collections/{cid}")
    assert page.status_code == 200
    html = page.text
    assert "<h1>kb</h1>" in html and "Field notes" in html
    assert '<label for="files">Documents</label>' in html
    assert '<input type="file" id="files" name="files" multiple' in html
    assert "data-dropzone" in html and "<progress" in html and ">Upload</button>" in html
    assert '<script src="/console/static/documents.js" defer></script>' in html
    assert 'aria-current="page">Documents</a>' in html
    assert "No documents yet" in html and TRIGGER not in html
    # The same page by name.
    assert console.get("/console/collections/kb").status_code == 200
    assert console.get("/console/static/documents.js").status_code == 200


def test_several_files_at_once_each_get_their_outcome(console: TestClient) -> None:
    cid = create_collection(console, "kb")
    response = upload(
        console, cid,
        [("volcanoes.md", DOCS["volcanoes.md"].encode()), ("photo.png", b"\x89PNG\r\n\x1a\n"),
         ("empty.txt", b""), ("sourdough.txt", DOCS["sourdough.txt"].encode())],
    )  # fmt: skip
    assert response.status_code == 200, response.text
    html = response.text
    alerts = re.findall(r'<li class="alert" role="alert">([^<]*)</li>', html)
    assert len(alerts) == 2, html
    assert "photo.png was not uploaded" in alerts[0] and "not supported" in alerts[0]
    assert "empty.txt was not uploaded" in alerts[1] and "empty" in alerts[1]
    assert "volcanoes.md was uploaded" in html and "sourdough.txt was uploaded" in html
    # The table comes along, swapped out of band, with both good files.
    assert 'hx-swap-oob="outerHTML"' in html and len(rows(html)) == 2
    final = wait_statuses(console, cid)
    assert set(rows(final).values()) == {"ready"}
    assert TRIGGER not in final and "hx-get" not in final
    # The same bytes again: said, not added.
    again = upload(console, cid, [("copy.md", DOCS["volcanoes.md"].encode())])
    assert again.status_code == 200 and "already in this collection" in again.text
    assert len(rows(table(console, cid))) == 2


def test_refused_uploads_without_script_and_an_empty_form(console_factory: Callable[..., TestClient]) -> None:
    from tests.app.console.conftest import sign_in

    client = console_factory(MAX_UPLOAD_BYTES="2000")
    sign_in(client)
    cid = create_collection(client, "kb")
    big = upload(client, cid, [("big.txt", b"word " * 1000)], htmx=False)
    assert big.status_code == 400
    assert 'role="alert"' in big.text and "big.txt was not uploaded" in big.text and "larger than" in big.text
    assert "<h1>kb</h1>" in big.text  # the whole page, the form still there
    broken = upload(client, cid, [("broken.pdf", b"%PDF-1.4 not really")], htmx=False)
    assert broken.status_code == 400 and "broken.pdf was not uploaded" in broken.text
    nothing = client.post(
        f"/console/collections/{cid}/documents", data={"csrf_token": csrf_of(client.get("/console/").text)},
        files=[("files", ("", b"", "application/octet-stream"))],
    )  # fmt: skip
    assert nothing.status_code == 400 and "Choose one or more files" in nothing.text
    assert rows(table(client, cid)) == {}


def test_table_polls_only_while_something_is_not_final(console: TestClient) -> None:
    cid = create_collection(console, "kb")
    ctx = ctx_of(console)
    dispatcher, ctx.dispatcher = ctx.dispatcher, None  # nothing indexes: the document stays pending
    try:
        assert upload(console, cid, [("chess.html", DOCS["chess.html"].encode())]).status_code == 200
        pending = table(console, cid)
        assert list(rows(pending).values()) == ["pending"]
        assert TRIGGER in pending and f'hx-get="/console/collections/{cid}/documents"' in pending
        assert TRIGGER in console.get(f"/console/collections/{cid}").text
    finally:
        ctx.dispatcher = dispatcher
    (doc_id,) = rows(pending)
    reindexed = post_action(console, cid, doc_id, "reindex")
    assert reindexed.status_code == 200 and "being indexed again" in reindexed.text
    done = wait_statuses(console, cid)
    assert rows(done) == {doc_id: "ready"} and TRIGGER not in done


def test_a_failed_document_shows_its_reason_and_can_be_reindexed(console: TestClient) -> None:
    cid = create_collection(console, "kb")
    upload(console, cid, [("volcanoes.md", DOCS["volcanoes.md"].encode())])
    (doc_id,) = rows(wait_statuses(console, cid))
    ctx = ctx_of(console)
    stored = services.get_document(ctx, cid, doc_id)
    data = ctx.object_store.get(stored.object_key)
    ctx.object_store.delete(stored.object_key)  # its file is gone: indexing it again fails
    assert post_action(console, cid, doc_id, "reindex").status_code == 200
    failed = wait_statuses(console, cid)
    assert rows(failed) == {doc_id: "failed"} and TRIGGER not in failed
    assert re.search(r'<p class="reason">.*FileNotFoundError', failed), failed
    view = console.get(f"/console/collections/{cid}/documents/{doc_id}").text
    assert "Indexing failed: FileNotFoundError" in view and "No chunks: indexing failed" in view
    # The file is back: a reindex (a plain form this time) makes it ready again.
    ctx.object_store.put(stored.object_key, data)
    plain = post_action(console, cid, doc_id, "reindex", htmx=False)
    assert (plain.status_code, plain.headers["location"]) == (303, f"/console/collections/{cid}")
    assert rows(wait_statuses(console, cid)) == {doc_id: "ready"}


def test_delete_a_document(console: TestClient) -> None:
    cid = create_collection(console, "kb")
    upload(console, cid, [("a.md", DOCS["volcanoes.md"].encode()), ("b.txt", DOCS["sourdough.txt"].encode())])
    first, second = rows(wait_statuses(console, cid))
    page = console.get(f"/console/collections/{cid}").text
    assert f'hx-post="/console/collections/{cid}/documents/{first}/delete"' in page and "hx-confirm=" in page
    # Without script the Delete button opens a confirmation page.
    confirm = console.get(f"/console/collections/{cid}/documents/{first}/delete")
    assert confirm.status_code == 200 and "cannot be undone" in confirm.text
    assert f'action="/console/collections/{cid}/documents/{first}/delete"' in confirm.text
    deleted = post_action(console, cid, first, "delete")
    assert deleted.status_code == 200 and "was deleted" in deleted.text
    assert rows(deleted.text) == {second: "ready"}
    assert console.get(f"/console/collections/{cid}/documents/{first}").status_code == 404
    plain = post_action(console, cid, second, "delete", htmx=False)
    assert (plain.status_code, plain.headers["location"]) == (303, f"/console/collections/{cid}")
    assert rows(table(console, cid)) == {}
    assert post_action(console, cid, second, "delete").status_code == 404


def test_document_view_has_chunk_anchors_and_escapes_text(console: TestClient) -> None:
    cid = create_collection(console, "kb")
    text = "<script>alert('x')</script> " + " ".join(f"Axolotls regrow limb number {i}." for i in range(60))
    upload(console, cid, [("<img src=x>.txt", text.encode())])
    (doc_id,) = rows(wait_statuses(console, cid))
    listing = console.get(f"/console/collections/{cid}").text
    assert "<img src=x>" not in listing and "&lt;img src=x&gt;.txt" in listing
    view = console.get(f"/console/collections/{cid}/documents/{doc_id}")
    assert view.status_code == 200
    ids = [int(n) for n in re.findall(r'<section id="chunk-(\d+)" class="chunk"', view.text)]
    assert len(ids) >= 2 and ids == list(range(len(ids)))
    assert "<script>alert" not in view.text and "&lt;script&gt;alert(" in view.text
    assert "&lt;img src=x&gt;.txt</h1>" in view.text


def test_unsafe_routes_refuse_a_missing_csrf_token(console: TestClient) -> None:
    cid = create_collection(console, "kb")
    refused = upload(console, cid, [("a.md", b"Bees dance.")], token="")
    assert refused.status_code == 403 and "expired" in refused.text
    bare = console.post(f"/console/collections/{cid}/documents", files=[("files", ("a.md", b"Bees.", "text/plain"))])
    assert bare.status_code == 403
    assert rows(table(console, cid)) == {}
    upload(console, cid, [("a.md", DOCS["volcanoes.md"].encode())])
    (doc_id,) = rows(wait_statuses(console, cid))
    for action in ("delete", "reindex"):
        forged = console.post(f"/console/collections/{cid}/documents/{doc_id}/{action}", data={"csrf_token": "x"})
        assert forged.status_code == 403
    for path, data in ((f"/console/collections/{cid}/delete", {"confirm_name": "kb"}),
                       (f"/console/collections/{cid}/settings", {"description": "forged"})):  # fmt: skip
        assert console.post(path, data=data).status_code == 403
    assert rows(table(console, cid)) == {doc_id: "ready"}
    assert services.get_collection(ctx_of(console), "kb").description == ""


@pytest.mark.parametrize(
    "path",
    [
        "/console/collections/nope",
        "/console/collections/nope/documents",
        "/console/collections/nope/settings",
        "/console/collections/nope/search?q=x",
        "/console/collections/kb/documents/0123456789abcdef0123456789abcdef",
        "/console/collections/kb/documents/not-an-id",
        "/console/collections/kb/documents/%00",
        "/console/collections/%00",
        "/console/collections/kb/documents/0123456789abcdef0123456789abcdef/delete",
    ],
)
def test_unknown_ids_are_the_404_page(console: TestClient, path: str) -> None:
    create_collection(console, "kb")
    response = console.get(path)
    assert response.status_code == 404, (path, response.text)
    assert "text/html" in response.headers["content-type"] and "Not found" in response.text


def test_unknown_ids_on_unsafe_routes_are_404_pages(console: TestClient) -> None:
    token = csrf_of(console.get("/console/").text)
    for path in (
        "/console/collections/nope/documents",
        "/console/collections/nope/delete",
        "/console/collections/nope/settings",
        "/console/collections/nope/documents/0123456789abcdef0123456789abcdef/reindex",
    ):
        response = console.post(path, data={"csrf_token": token})
        assert response.status_code == 404 and "Not found" in response.text, path


def test_settings_change_the_description(console: TestClient) -> None:
    cid = create_collection(console, "kb", "old words")
    page = console.get(f"/console/collections/{cid}/settings")
    assert page.status_code == 200 and 'aria-current="page">Settings</a>' in page.text
    assert '<label for="description">Description</label>' in page.text and "old words" in page.text
    token = csrf_of(page.text)

    def save(description: str) -> httpx.Response:
        form = {"description": description, "csrf_token": token}
        return console.post(f"/console/collections/{cid}/settings", data=form)

    saved = save(" New <b>words</b> ")
    assert saved.status_code == 200 and "was saved" in saved.text
    assert "New &lt;b&gt;words&lt;/b&gt;" in saved.text
    assert "New &lt;b&gt;words&lt;/b&gt;" in console.get("/console/").text
    too_long = "x" * 2001
    refused = save(too_long)
    assert refused.status_code == 400 and 'role="alert"' in refused.text and "at most 2000" in refused.text
    assert too_long in refused.text  # what was typed is kept
    control = save("a\x00b")
    assert control.status_code == 400 and "control characters" in control.text
    assert services.get_collection(ctx_of(console), "kb").description == "New <b>words</b>"


def test_delete_the_collection_needs_its_name(console: TestClient) -> None:
    cid = create_collection(console, "handbook")
    upload(console, cid, [("a.md", DOCS["volcanoes.md"].encode())])
    wait_statuses(console, cid)
    page = console.get(f"/console/collections/{cid}/settings").text
    assert '<label for="confirm_name">Type the collection name to confirm</label>' in page
    assert 'id="confirm_name"' in page and ">Delete collection</button>" in page
    token = csrf_of(page)
    for typed in ("handbok", "", "HANDBOOK"):
        wrong = console.post(f"/console/collections/{cid}/delete", data={"confirm_name": typed, "csrf_token": token})
        assert wrong.status_code == 400 and 'role="alert"' in wrong.text and "nothing was deleted" in wrong.text
    assert console.get(f"/console/collections/{cid}").status_code == 200
    right = console.post(
        f"/console/collections/{cid}/delete", data={"confirm_name": "handbook", "csrf_token": token},
        follow_redirects=False,
    )  # fmt: skip
    assert (right.status_code, right.headers["location"]) == (303, "/console/")
    home = console.get("/console/")
    assert "Collection handbook was deleted." in home.text and 'role="status"' in home.text
    assert "Collection handbook was deleted." not in console.get("/console/").text  # said once
    assert console.get(f"/console/collections/{cid}").status_code == 404
    assert services.list_collections(ctx_of(console)) == []


def test_services_for_the_console(console: TestClient) -> None:
    """The service functions the pages added: description update, a document's chunks, chunk ordinals."""
    ctx = ctx_of(console)
    services.create_collection(ctx, "kb", "before")
    assert services.update_collection_description(ctx, "kb", "after").description == "after"
    assert services.get_collection(ctx, "kb").description == "after"
    with pytest.raises(services.InvalidInput):
        services.update_collection_description(ctx, "kb", "y" * (services.MAX_DESCRIPTION + 1))
    with pytest.raises(services.NotFound):
        services.update_collection_description(ctx, "missing", "z")
    long_text = " ".join(f"Paragraph {i} about basalt and magma." for i in range(40))
    doc = services.upload_document(ctx, "kb", "long.txt", None, long_text.encode()).document
    wait_until(lambda: services.get_document(ctx, "kb", doc.id).status == "ready", 120, "indexed")
    chunks = services.list_chunks(ctx, "kb", doc.id)
    assert len(chunks) >= 2 and [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert services.chunk_ordinals(ctx, [chunks[1].id, "missing"]) == {chunks[1].id: 1}
    assert services.chunk_ordinals(ctx, []) == {}


def test_the_pages_carry_no_inline_code_nor_external_assets(console: TestClient) -> None:
    cid = create_collection(console, "kb", "d")
    upload(console, cid, [("a.md", DOCS["volcanoes.md"].encode())])
    (doc_id,) = rows(wait_statuses(console, cid))
    for path in (
        f"/console/collections/{cid}",
        f"/console/collections/{cid}/documents",
        f"/console/collections/{cid}/documents/{doc_id}",
        f"/console/collections/{cid}/documents/{doc_id}/delete",
        f"/console/collections/{cid}/settings",
        f"/console/collections/{cid}/search?q=magma",
    ):
        html = console.get(path, headers=HTMX if path.endswith("/documents") else {}).text
        assert "<script>" not in html and " style=" not in html and "<style" not in html, path
        assert "hx-on" not in html and "javascript:" not in html, path
        assert not re.search(r"""(src|href|action)=["']?(https?:)?//""", html), path
        for src in re.findall(r'<script src="([^"]+)"', html):
            assert src.startswith("/console/static/") and console.get(src).status_code == 200, src
