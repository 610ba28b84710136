"""Metadata database: SQLAlchemy 2 models and engine helpers."""
