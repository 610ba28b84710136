"""ApeRAG: the RAG engine deployed by the aperag-operator (API, ingestion workers, stores, migrations)."""

__version__ = "0.1.0"
