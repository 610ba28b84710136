"""The knowledge graph of a collection: entities and relations extracted from its chunks, merged across
chunks and documents, stored in PostgreSQL with links back to the chunks that support them.

- aperag.graph.model: the extracted values and name normalisation (pure);
- aperag.graph.offline: the deterministic extractor used without a chat model;
- aperag.graph.llm_extractor: extraction by the chat model (batching, cache, malformed output);
- aperag.graph.store: the tables (revision 0004): merge, prune, read;
- aperag.graph.build: one document's graph, the task ingestion queues after its chunks are indexed;
- aperag.graph.retrieval: the `graph` search mode.
"""
