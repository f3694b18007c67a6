"""audit entries are linked into the chain after they are written

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 02:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_log", sa.Column("chain_seq", sa.BigInteger(), nullable=True))
    # Every entry written so far was linked as it was written, in id order.
    op.execute("UPDATE audit_log SET chain_seq = id")
    op.create_index("ix_audit_log_chain_seq", "audit_log", ["chain_seq"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_audit_log_chain_seq", table_name="audit_log")
    op.drop_column("audit_log", "chain_seq")
