"""each job keeps the product version that ran it, for evaluation per version

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 12:20:00

Two nullable columns, added without rewriting the table on PostgreSQL as on SQLite, and a
partial index of the jobs whose summary's version is not read yet. The versions of the
summaries already stored are not read here: a replica's sweep reads them afterwards, a batch
per transaction (`aifi.exchange.versions`), so that the upgrade neither rewrites every job
nor holds their rows while replicas of the previous release still serve. Jobs that ended
without a summary keep no version: which one they were created for was not kept, and the
catalogue's today may not be it.

On PostgreSQL, building the index holds back writes to the jobs while it reads them (it
holds every job with a summary until the sweep has read them). An operator with many jobs
builds it beforehand, without holding writes back, under the same name:

    ALTER TABLE jobs ADD COLUMN IF NOT EXISTS product_version VARCHAR(64);
    ALTER TABLE jobs ADD COLUMN IF NOT EXISTS version_read BOOLEAN;
    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_jobs_version_unread
        ON jobs (id) WHERE summary IS NOT NULL AND version_read IS NULL;

and this migration then finds them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_UNREAD = "summary IS NOT NULL AND version_read IS NULL"


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("jobs")}
    if "product_version" not in columns:
        op.add_column("jobs", sa.Column("product_version", sa.String(64), nullable=True))
    if "version_read" not in columns:
        op.add_column("jobs", sa.Column("version_read", sa.Boolean(), nullable=True))
    op.create_index(
        "ix_jobs_version_unread",
        "jobs",
        ["id"],
        postgresql_where=sa.text(_UNREAD),
        sqlite_where=sa.text(_UNREAD),
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_version_unread", table_name="jobs")
    op.drop_column("jobs", "version_read")
    op.drop_column("jobs", "product_version")
