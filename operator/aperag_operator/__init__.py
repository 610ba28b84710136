"""Kubernetes operator for ApeRAG."""

__version__ = "0.1.0"
