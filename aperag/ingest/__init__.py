"""Ingestion: parse -> chunk -> embed -> index, run by Celery workers or in-process."""
