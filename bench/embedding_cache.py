"""An on-disk cache of document embeddings for the retrieval evaluations.

Embedding the evaluation corpora (~1,000 chunks) with the numpy model takes minutes on 2 shared
cores; the vectors depend only on the model and the text, so they are computed once per machine and
kept in SQLite under ~/.cache/aperag-operator/. Nothing else is cached: chunking, storing, full-text
indexing and searching run for real every time. Queries are embedded live (they are part of what
search does).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt

from aperag.config import Settings
from aperag.embedding import Embedder, get_embedder, replace_embedder

CACHE_DIR = Path(os.environ.get("APERAG_EMBEDDING_CACHE", Path.home() / ".cache" / "aperag-operator"))


class CachingEmbedder:
    def __init__(self, inner: Embedder, model_key: str) -> None:
        self.inner = inner
        self.dimension = inner.dimension
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model_key)
        self.db = sqlite3.connect(str(CACHE_DIR / f"embeddings-{safe}.sqlite"), check_same_thread=False)
        self.db.execute("CREATE TABLE IF NOT EXISTS v (k TEXT PRIMARY KEY, vec BLOB NOT NULL)")
        self.lock = threading.Lock()

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        with self.lock:
            found = (
                {
                    k: np.frombuffer(v, dtype=np.float32)
                    for k, v in self.db.execute(
                        f"SELECT k, vec FROM v WHERE k IN ({','.join('?' * len(keys))})", keys
                    ).fetchall()
                }
                if keys
                else {}
            )
        missing = [i for i, k in enumerate(keys) if k not in found]
        if missing:
            fresh = self.inner.embed([texts[i] for i in missing])
            with self.lock:
                self.db.executemany(
                    "INSERT OR REPLACE INTO v VALUES (?, ?)",
                    [(keys[i], fresh[j].astype(np.float32).tobytes()) for j, i in enumerate(missing)],
                )
                self.db.commit()
            for j, i in enumerate(missing):
                found[keys[i]] = fresh[j]
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for i, k in enumerate(keys):
            out[i] = found[k]
        return out

    def embed_queries(self, queries: list[str]) -> npt.NDArray[np.float32]:
        return self.inner.embed_queries(queries)


@contextmanager
def cached_embeddings(settings: Settings) -> Iterator[CachingEmbedder]:
    """Every context with `settings` embeds documents through the cache while this is open."""
    inner = get_embedder(settings)
    caching = CachingEmbedder(inner, f"{settings.embedding_backend}-{settings.embedding_model}")
    replace_embedder(settings, caching)
    try:
        yield caching
    finally:
        replace_embedder(settings, inner)
        caching.db.close()
