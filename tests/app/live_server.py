"""The app served by a real uvicorn on 127.0.0.1 (a thread of the test process), for tests that need a
real HTTP client: streaming, the openai client, the MCP client."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from aperag.context import AppContext
from aperag.services import create_collection, upload_document
from tests.app.conftest import wait_until


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Serve `app` until the block ends; yields its base URL. The socket is bound before the server
    starts, so there is no race for the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="live-api", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 30, "the API to start")
        assert server.started, "the API did not start (see the log above)"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def seed(ctx: AppContext, collection: str, documents: dict[str, bytes]) -> dict[str, str]:
    """A collection with the documents indexed synchronously (no dispatcher): filename -> document id."""
    from aperag.ingest.pipeline import index_document

    create_collection(ctx, collection)
    ids = {}
    for name, data in documents.items():
        doc = upload_document(ctx, collection, name, None, data).document
        assert index_document(ctx, doc.id, final_attempt=True) == "ready", name
        ids[name] = doc.id
    return ids
