"""Alembic environment. Always driven from aperag.migrate, which passes an open connection that
already holds the migration advisory lock and no transaction: Alembic opens the run's one transaction
(``transaction_per_migration=False``: every revision of a run commits together or not at all, except
what a revision's ``autocommit_block`` commits, see aperag.migrate)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from aperag.db.models import Base
from aperag.migrate import lock_schema_tables

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=False)
        with context.begin_transaction():
            if config.attributes.get("lock_tables"):
                lock_schema_tables(connection)
            context.run_migrations()
        return
    # Plain `alembic` CLI use (development only): no lock.
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
