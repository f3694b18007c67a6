"""each job keeps when the exchange found one of its inputs missing from its blob store

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 22:40:00

Jobs from before this revision keep null: a loss was logged and counted then, not marked on
the job. A nullable column without a default is added without rewriting the table, on
PostgreSQL as on SQLite.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("inputs_lost_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "inputs_lost_at")
