"""indexes that keep the metrics' scrape from reading every job ever

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_ended", "jobs", ["ended_at"])
    op.create_index(
        "ix_jobs_unacknowledged",
        "jobs",
        ["state"],
        postgresql_where=sa.text("acknowledged_at IS NULL"),
        sqlite_where=sa.text("acknowledged_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_unacknowledged", table_name="jobs")
    op.drop_index("ix_jobs_ended", table_name="jobs")
