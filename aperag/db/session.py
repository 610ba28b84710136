"""Engine and session factories, cached per database URL, and one-connection blocks of reads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

# Connections an engine keeps open (DB_POOL_SIZE). The API runs its blocking work on as many threads
# (aperag.api.app), so every thread that reaches the database finds an open connection: with fewer, a
# burst of searches opened and closed connections by the dozen (a PostgreSQL backend started, and its
# caches warmed, for a third of the requests) and queued for them (docs/benchmarks.md, "Search under load").
DEFAULT_POOL_SIZE = 20
# Beyond the pool, for the rare thread that holds two connections and for threads outside the API's
# limit (the embedding batcher, in-process indexing); opened for the moment and closed on return.
POOL_OVERFLOW = 10

_engines: dict[str, Engine] = {}
_lock = threading.Lock()
_pool_size = DEFAULT_POOL_SIZE


def configure_pool(size: int) -> None:
    """The pool size of the engines this process creates from now on (the process's AppContext sets it
    from DB_POOL_SIZE before any database work)."""
    global _pool_size
    if size < 1:
        raise ValueError(f"pool size must be at least 1, not {size}")
    with _lock:
        _pool_size = size


def pool_size() -> int:
    return _pool_size


def get_engine(url: str) -> Engine:
    with _lock:
        if url not in _engines:
            # pre_ping: a PostgreSQL restart must not leave the API serving dead connections.
            _engines[url] = create_engine(
                url, pool_pre_ping=True, pool_size=_pool_size, max_overflow=POOL_OVERFLOW
            )
        return _engines[url]


# The connection of the innermost `shared_transaction` block, with its database URL.
_shared: ContextVar[tuple[str, Connection] | None] = ContextVar("aperag_shared_connection", default=None)


@contextmanager
def shared_transaction(url: str) -> Iterator[Connection]:
    """One connection and one transaction for a block of reads: the stores on this database
    (`aperag.stores.pg_connection.store_transaction`) and `AppContext.read_session` inside the block use
    it instead of checking out their own. A search is then one pool checkout (one pre-ping, one BEGIN and
    COMMIT) instead of four, and holds one connection rather than up to two at a time. Nested blocks on
    the same database join the outer one."""
    current = _shared.get()
    if current is not None and current[0] == url:
        yield current[1]
        return
    with get_engine(url).begin() as conn:
        token = _shared.set((url, conn))
        try:
            yield conn
        finally:
            _shared.reset(token)


def shared_connection(url: str) -> Connection | None:
    """The connection of the enclosing `shared_transaction` block on this database, if any."""
    current = _shared.get()
    return current[1] if current is not None and current[0] == url else None


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


def dispose_all() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
