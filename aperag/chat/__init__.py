"""Grounded chat over a collection: retrieval, a context within a token budget, numbered citations,
history in PostgreSQL. The HTTP shapes are in aperag.api.routes (chat, openai_compat)."""
