"""retention marks each job whose input or result folder it emptied

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 16:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("inputs_swept_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("results_swept_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_jobs_inputs_sweep", "jobs", ["inputs_swept_at", "ended_at"])
    op.create_index("ix_jobs_results_sweep", "jobs", ["results_swept_at", "acknowledged_at"])
    # A job whose rows were all purged already had its folder emptied: the first sweep after
    # the upgrade visits only the others.
    for column, table in (("inputs_swept_at", "job_inputs"), ("results_swept_at", "job_results")):
        op.execute(
            f"UPDATE jobs SET {column} = (SELECT max(purged_at) FROM {table} "
            f"WHERE {table}.job_id = jobs.id) "
            f"WHERE EXISTS (SELECT 1 FROM {table} WHERE {table}.job_id = jobs.id) "
            f"AND NOT EXISTS (SELECT 1 FROM {table} WHERE {table}.job_id = jobs.id "
            f"AND {table}.purged_at IS NULL)"
        )


def downgrade() -> None:
    op.drop_index("ix_jobs_results_sweep", table_name="jobs")
    op.drop_index("ix_jobs_inputs_sweep", table_name="jobs")
    op.drop_column("jobs", "results_swept_at")
    op.drop_column("jobs", "inputs_swept_at")
