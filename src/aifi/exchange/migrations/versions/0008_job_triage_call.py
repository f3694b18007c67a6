"""each job keeps its summary's triage flag in a column, for evaluation and drift

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 08:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_UNREAD = "triage_flag IS NULL AND summary IS NOT NULL"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("triage_flag", sa.String(8), nullable=True))
    op.create_index(
        "ix_jobs_triage_unread",
        "jobs",
        ["id"],
        postgresql_where=sa.text(_UNREAD),
        sqlite_where=sa.text(_UNREAD),
    )
    # The jobs that already hold a summary get its flag, as aifi.exchange.triage reads it.
    jobs = sa.table("jobs", sa.column("summary", sa.JSON), sa.column("triage_flag", sa.String))
    flag = jobs.c.summary[("triage", "flag")].as_string()
    read = sa.case((flag == "positive", "positive"), (flag == "negative", "negative"), else_="none")
    op.execute(jobs.update().where(jobs.c.summary.is_not(None)).values(triage_flag=read))


def downgrade() -> None:
    op.drop_index("ix_jobs_triage_unread", table_name="jobs")
    op.drop_column("jobs", "triage_flag")
