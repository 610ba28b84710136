"""Ingestion attempts and status timestamps, for the stuck-document reconciler.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("documents", sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
    op.add_column(
        "documents",
        sa.Column(
            "status_changed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    # The reconciler's query: documents in a given status whose status is older than a cutoff.
    op.create_index("ix_documents_status_changed", "documents", ["status", "status_changed_at"])


def downgrade() -> None:
    op.drop_index("ix_documents_status_changed", table_name="documents")
    op.drop_column("documents", "status_changed_at")
    op.drop_column("documents", "attempts")
