"""The ApeRAG resource's spec model (the public API)."""

from aperag_operator.spec.model import ApeRAGSpec, ApeRAGStatus, parse_spec

__all__ = ["ApeRAGSpec", "ApeRAGStatus", "parse_spec"]
