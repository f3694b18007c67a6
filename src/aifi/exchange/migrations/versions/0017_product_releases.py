"""the versions of each product its vendor published in the catalogue, for evaluation per version

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 15:00:00

Evaluation per version tells a version the catalogue named from one that only result summaries
or failing workers name. The versions published before this release are read from what the
exchange kept of them: each product's version now, the versions its admission events and
dossier name, and the access log's record of each publication ("version …" on a product's
update), the earliest moment of each. A publication whose access log entry was archived out
of the database before the upgrade, of a version no admission or dossier named, is not found:
evaluation then shows that version as not in the catalogue.

The access log's read is one pass over it, under no lock that holds back writes; the table is
created after it, since its reference to the products holds back their changes (a
publication, an admission) on PostgreSQL until the upgrade commits. The dates of versions
published before it are the earliest the exchange still holds: a version published, replaced
and published again, whose first publication's entry was archived, is dated by a later one.
During a rolling upgrade a replica of the previous release records no publication: evaluation
takes a product's current version as published, and a new replica records it (at the product's
last change) when the vendor next publishes.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

#: What a product's publication wrote in the access log, before the version.
_PUBLISHED = "version "
#: Where the version begins in it (SQL counts from 1).
_AFTER = len(_PUBLISHED) + 1


def upgrade() -> None:
    bind = op.get_bind()
    products = set(bind.execute(sa.text("SELECT id FROM products")).scalars())
    earliest: dict[tuple[str, str], datetime] = {}

    def found(product_id: str, version: str | None, at: datetime | str | None) -> None:
        if product_id not in products or not version or len(version) > 64 or at is None:
            return
        moment = _aware(at)
        key = (product_id, version)
        if key not in earliest or moment < earliest[key]:
            earliest[key] = moment

    sources = (
        "SELECT id, version, updated_at FROM products",
        "SELECT product_id, version, MIN(at) FROM admission_events GROUP BY product_id, version",
        "SELECT product_id, version, updated_at FROM product_dossiers",
        f"SELECT object_id, SUBSTR(detail, {_AFTER}), MIN(at) FROM audit_log "
        "WHERE object_type = 'product' AND action = 'update' AND outcome = 'success' "
        f"AND detail LIKE '{_PUBLISHED}%' GROUP BY object_id, SUBSTR(detail, {_AFTER})",
    )
    for statement in sources:
        for product_id, version, at in bind.execute(sa.text(statement)):
            found(product_id, version, at)
    # Created after the reads: its reference to the products holds back their changes (a
    # publication, an admission) until the upgrade commits, which is moments from here.
    op.create_table(
        "product_releases",
        sa.Column("product_id", sa.String(64), sa.ForeignKey("products.id"), primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
    )
    if earliest:
        releases = sa.table(
            "product_releases",
            sa.column("product_id", sa.String),
            sa.column("version", sa.String),
            sa.column("published_at", sa.DateTime(timezone=True)),
        )
        op.bulk_insert(
            releases,
            [
                {"product_id": p, "version": v, "published_at": at}
                for (p, v), at in sorted(earliest.items())
            ],
        )


def _aware(moment: datetime | str) -> datetime:
    """SQLite hands a moment back as text (a plain query has no column type to read it by),
    in UTC as the exchange writes them."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def downgrade() -> None:
    op.drop_table("product_releases")
