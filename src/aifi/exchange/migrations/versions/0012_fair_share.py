"""hospitals take turns at a vendor's queue: a place in the queue for every job, and the
indexes that find a queue's head and a hospital's last job waiting

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 06:00:00

Jobs waiting when this runs keep their order: they all get place 0 and go oldest first.

On PostgreSQL, building `ix_jobs_queue` holds back writes to the jobs until it is built (it
covers every job; `ix_jobs_waiting` only the waiting ones). An operator with many jobs builds
it beforehand, without holding writes back, under the same name:

    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_jobs_queue
        ON jobs (vendor_id, state, inputs_complete, priority_rank, queue_place, created_at);

after adding the column (`ALTER TABLE jobs ADD COLUMN queue_place BIGINT DEFAULT 0 NOT NULL`,
which PostgreSQL does without rewriting the table); this migration then finds both.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "queue_place" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("jobs")}:
        op.add_column(
            "jobs",
            sa.Column("queue_place", sa.BigInteger(), server_default="0", nullable=False),
        )
    op.create_index(
        "ix_jobs_queue",
        "jobs",
        ["vendor_id", "state", "inputs_complete", "priority_rank", "queue_place", "created_at"],
        if_not_exists=True,
    )
    op.create_index(
        "ix_jobs_waiting",
        "jobs",
        ["hospital_id", "vendor_id", "inputs_complete", "priority_rank", "queue_place"],
        postgresql_where=sa.text("state = 'requested'"),
        sqlite_where=sa.text("state = 'requested'"),
        if_not_exists=True,
    )
    op.drop_index("ix_jobs_claim", table_name="jobs")


def downgrade() -> None:
    op.create_index(
        "ix_jobs_claim", "jobs", ["state", "inputs_complete", "priority_rank", "created_at"]
    )
    op.drop_index("ix_jobs_waiting", table_name="jobs")
    op.drop_index("ix_jobs_queue", table_name="jobs")
    op.drop_column("jobs", "queue_place")
