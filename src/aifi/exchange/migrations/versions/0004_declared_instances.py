"""a job may declare how many instances it will get

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 01:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("declared_instances", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "declared_instances")
