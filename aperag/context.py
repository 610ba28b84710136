"""Everything a request or a task needs, built once per process from settings."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from aperag.config import Settings
from aperag.db.session import configure_pool, session_factory, shared_connection
from aperag.stores import (
    FulltextStore,
    ObjectStore,
    VectorStore,
    build_fulltext_store,
    build_object_store,
    build_vector_store,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from aperag.embedding import Embedder
    from aperag.ingest.dispatch import Dispatcher


@dataclass
class AppContext:
    settings: Settings
    dispatcher: Dispatcher | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        # Every process builds its context before its first query, so its engines get this pool size.
        configure_pool(self.settings.db_pool_size)

    @cached_property
    def sessions(self) -> sessionmaker[Session]:
        return session_factory(self.settings.database_url)

    def read_session(self) -> Session:
        """A session for reads: on the connection of the enclosing `shared_transaction` block if there
        is one (it joins that transaction and leaves it open), else on its own pooled connection."""
        shared = shared_connection(self.settings.database_url)
        return self.sessions(bind=shared) if shared is not None else self.sessions()

    @cached_property
    def vector_store(self) -> VectorStore:
        return build_vector_store(self.settings)

    @cached_property
    def fulltext_store(self) -> FulltextStore:
        return build_fulltext_store(self.settings)

    @cached_property
    def object_store(self) -> ObjectStore:
        return build_object_store(self.settings)

    @property
    def embedder(self) -> Embedder:
        from aperag.embedding import get_embedder

        return get_embedder(self.settings)

    @cached_property
    def tokenizer(self) -> Tokenizer:
        from aperag.chunking import load_tokenizer

        return load_tokenizer()

    def ensure_store_schemas(self) -> None:
        self.vector_store.ensure_schema()
        self.fulltext_store.ensure_schema()
        from aperag.db.session import get_engine
        from aperag.graph.store import ensure_indexes

        # The graph's embeddings are in PostgreSQL whatever VECTOR_DB_TYPE says (docs/app.md).
        ensure_indexes(get_engine(self.settings.database_url), self.settings.embedding_dimension)
