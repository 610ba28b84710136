"""Engine and session factories, cached per database URL."""

from __future__ import annotations

import threading

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def get_engine(url: str) -> Engine:
    with _lock:
        if url not in _engines:
            # pre_ping: a PostgreSQL restart must not leave the API serving dead connections.
            _engines[url] = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
        return _engines[url]


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


def dispose_all() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
