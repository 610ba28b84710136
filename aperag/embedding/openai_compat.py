"""Embeddings from an OpenAI-compatible `/embeddings` endpoint (OpenAI, vLLM, TEI, Ollama...)."""

from __future__ import annotations

from typing import cast

import httpx
import numpy as np

from aperag.embedding import Vectors


class EmbeddingServiceError(RuntimeError):
    """The embeddings endpoint failed; ingestion retries on this."""


class OpenAICompatibleEmbedder:
    def __init__(self, base_url: str, api_key: str, model: str, dimension: int, batch_size: int = 32) -> None:
        if not base_url:
            raise ValueError("EMBEDDING_API_BASE must be set for EMBEDDING_BACKEND=openai")
        self.url = base_url.rstrip("/") + "/embeddings"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model = model
        self.dimension = dimension
        self.batch_size = max(1, batch_size)
        self.client = httpx.Client(timeout=60.0)

    def embed_queries(self, queries: list[str]) -> Vectors:
        return self.embed(queries)

    def embed(self, texts: list[str]) -> Vectors:
        rows: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            try:
                resp = self.client.post(
                    self.url, headers=self.headers, json={"model": self.model, "input": batch}
                )
                resp.raise_for_status()
            except httpx.HTTPError as exc:
                raise EmbeddingServiceError(f"embedding request failed: {exc}") from exc
            data = sorted(resp.json()["data"], key=lambda item: item["index"])
            rows.extend(item["embedding"] for item in data)
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)
        if vectors.shape[1] != self.dimension and len(texts):
            raise EmbeddingServiceError(
                f"endpoint returned {vectors.shape[1]}-dim vectors, EMBEDDING_DIMENSION is {self.dimension}"
            )
        norms = np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        return cast(Vectors, (vectors / norms).astype(np.float32))
