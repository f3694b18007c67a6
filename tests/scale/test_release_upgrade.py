"""The upgrade that keeps each product's published versions (evaluation per version tells a
version the catalogue named from one only result summaries or failing workers name) finds the
versions published before it in what the exchange kept of them, each at its earliest moment,
on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from aifi.exchange.clock import as_utc
from aifi.exchange.db import alembic_config
from scale.servers import PostgresServer

#: Moments as the exchange stores them: SQLite holds the ORM's naive UTC text.
MOMENTS = {
    "sqlite": {n: f"2026-0{n}-01 10:00:00.000000" for n in range(1, 10)},
    "postgresql": {n: f"2026-0{n}-01 10:00:00+00:00" for n in range(1, 10)},
}

_BEFORE = (
    "INSERT INTO organisations (id, name, kind, created_at) VALUES ('v', 'V', 'vendor', :t1)",
    # p is at version 3 now; q never changed version; r is known by its row and its dossier
    # only (its publications' entries archived).
    "INSERT INTO products (id, vendor_id, name, version, clinical_area, status, manifest, "
    "created_at, updated_at) VALUES ('p', 'v', 'P', '3', 'triage', 'admitted', '{}', :t1, :t8),"
    " ('q', 'v', 'Q', 'a', 'triage', 'admitted', '{}', :t2, :t4),"
    " ('r', 'v', 'R', 'z', 'triage', 'admitted', '{}', :t1, :t5)",
    "INSERT INTO admission_events (product_id, version, from_state, to_state, action, "
    "organisation_id, role, note, at) VALUES "
    "('p', '2', 'draft', 'submitted', 'submit', 'v', 'vendor', '', :t3), "
    "('p', '2', 'submitted', 'admitted', 'admit', 'o', 'operator', '', :t5), "
    "('p', '3', 'admitted', 'under-review', 'publish', 'v', 'vendor', '', :t7)",
    "INSERT INTO product_dossiers (product_id, version, dossier, updated_at) VALUES "
    "('p', '2', '{}', :t6), ('r', 'y', '{}', :t4)",
)
_AUDIT = (
    "INSERT INTO audit_log (at, organisation_id, role, action, object_type, object_id, "
    "patient_pseudonym, outcome, detail, prev_hash, entry_hash) VALUES "
    "(:at, 'v', 'vendor', :action, :type, :id, '', :outcome, :detail, '', '')"
)
AUDIT = [
    # (moment, action, object type, object id, outcome, detail)
    (1, "update", "product", "p", "success", "version 1"),
    (2, "update", "product", "p", "success", "version 1"),  # published again: not later
    (6, "update", "product", "p", "success", "version 3"),  # before its admission event
    (2, "update", "product", "q", "success", "version a"),  # before q's last update
    (3, "update", "product", "p", "refused", "version 9"),  # refused: never published
    (3, "update", "dossier", "p", "success", "version 8"),  # a dossier, not a publication
    (3, "update", "product", "gone", "success", "version 1"),  # no such product now
    (3, "update", "product", "p", "success", "version " + "x" * 65),  # no version a job keeps
]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_versions_published_before_the_upgrade_are_found_at_their_first_moment(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'exchange.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.create_database("releases")
    command.upgrade(alembic_config(url), "0016")
    engine = create_engine(url)
    t = MOMENTS[backend]
    with engine.begin() as connection:
        for statement in _BEFORE:
            connection.execute(text(statement), {f"t{n}": at for n, at in t.items()})
        for n, action, kind, object_id, outcome, detail in AUDIT:
            connection.execute(
                text(_AUDIT),
                {"at": t[n], "action": action, "type": kind, "id": object_id,
                 "outcome": outcome, "detail": detail},
            )  # fmt: skip
    command.upgrade(alembic_config(url), "head")
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT product_id, version, published_at FROM product_releases")
        ).all()
    engine.dispose()
    found = {(p, v): as_utc(at if isinstance(at, datetime) else datetime.fromisoformat(at))
             for p, v, at in rows}  # fmt: skip

    def moment(n: int) -> datetime:
        return datetime(2026, n, 1, 10, tzinfo=UTC)

    assert found == {
        ("p", "1"): moment(1),  # the access log only
        ("p", "2"): moment(3),  # its first admission event, before its dossier and admission
        ("p", "3"): moment(6),  # the access log, before the admission event and the product
        ("q", "a"): moment(2),  # the access log, before the product's last update
        ("r", "y"): moment(4),  # its dossier only
        ("r", "z"): moment(5),  # its row only: its last change
    }
    # Back down and up again: the same.
    command.downgrade(alembic_config(url), "0016")
    command.upgrade(alembic_config(url), "head")
    engine = create_engine(url)
    with engine.connect() as connection:
        again = connection.execute(text("SELECT count(*) FROM product_releases")).scalar()
    engine.dispose()
    assert again == len(found)
