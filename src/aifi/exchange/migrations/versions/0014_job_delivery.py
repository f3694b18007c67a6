"""each job keeps what became of its results at the hospital, as its gateway said when it
acknowledged the job

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 22:10:00

Jobs acknowledged before this revision keep null: the exchange was not told. A nullable column
without a default is added without rewriting the table, on PostgreSQL as on SQLite.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("delivery", sa.String(16), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "delivery")
