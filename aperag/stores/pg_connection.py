"""One transaction on the app's PostgreSQL, for the stores that live there (pgvector, full-text)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

from aperag.db.session import get_engine, shared_connection
from aperag.stores import StoreUnavailable


@contextmanager
def store_transaction(url: str, store: str) -> Iterator[Connection]:
    """A connection in a transaction; a database that cannot be reached becomes StoreUnavailable, which
    the ingestion tasks retry. Inside `aperag.db.session.shared_transaction` on the same database: that
    block's connection and transaction."""
    try:
        shared = shared_connection(url)
        if shared is not None:
            yield shared
            return
        with get_engine(url).begin() as conn:
            yield conn
    except OperationalError as exc:
        raise StoreUnavailable(f"{store}: {exc.orig}") from exc
