"""each job keeps the product version that ran it, for evaluation per version

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 12:20:00

Jobs that already hold a summary get the version it names (the version that produced the
result). Jobs without one keep null: which version they were created for was not kept, and
the catalogue's version today may not be it. The column is added without rewriting the table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

#: The catalogue's longest version (a job keeps none longer).
_VERSION_MAX = 64


def upgrade() -> None:
    op.add_column("jobs", sa.Column("product_version", sa.String(_VERSION_MAX), nullable=True))
    jobs = sa.table("jobs", sa.column("summary", sa.JSON), sa.column("product_version", sa.String))
    named = jobs.c.summary["product_version"].as_string()
    fits = sa.and_(sa.func.length(named) > 0, sa.func.length(named) <= _VERSION_MAX)
    op.execute(jobs.update().where(jobs.c.summary.is_not(None), fits).values(product_version=named))


def downgrade() -> None:
    op.drop_column("jobs", "product_version")
