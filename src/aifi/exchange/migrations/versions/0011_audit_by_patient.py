"""an index on the access log by patient, so a privacy officer's search reads only that patient's
entries

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 03:40:00

On PostgreSQL, building it holds back writes to the access log (and so every request that
writes an entry) until it is built: under a second per million entries on the reference
machine (docs/benchmarks.md). An operator with a large log builds it beforehand, without holding
writes back, under the same name:

    CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_audit_log_patient
        ON audit_log (patient_pseudonym, chain_seq);

and this migration then finds it built.
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_audit_log_patient",
        "audit_log",
        ["patient_pseudonym", "chain_seq"],
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index("ix_audit_log_patient", table_name="audit_log")
