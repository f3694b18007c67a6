"""Organisations, products and subscriptions: who may send what to whom."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql import Update

from aifi.exchange.audit import Actor, AuditLog
from aifi.exchange.auth import KeyCache, new_api_key, require_role, store_api_key
from aifi.exchange.clock import as_utc, utcnow
from aifi.exchange.db import Database, insert_unless_taken
from aifi.exchange.errors import Conflict, Forbidden, Invalid, NotFound
from aifi.exchange.models import ApiKey, Organisation, Product, ProductRelease, Subscription
from aifi.exchange.schemas import (
    OrganisationIn,
    OrganisationKind,
    ProductManifest,
    ProductOut,
)
from aifi.product_versions import version_problem

#: Only an admitted product takes subscriptions and jobs (the admission rules themselves live in
#: aifi.governance.admission); suspending a product stops its new jobs at once, everywhere.
OPEN_PRODUCT_STATES = frozenset({"admitted"})


def product_out(product: Product) -> ProductOut:
    return ProductOut(
        id=product.id,
        vendor=product.vendor_id,
        name=product.name,
        version=product.version,
        clinical_area=product.clinical_area,
        status=product.status,
        manifest=ProductManifest.model_validate(product.manifest),
    )


def _holding(model: Any, kept: Any, key: str) -> Update:
    """The statement that holds one row of `model` (its id given as `key`) until the
    transaction ends, changing nothing (`kept` is set to itself): on PostgreSQL a row lock (a
    job's insert, which only shares the row's key, does not wait for it), on SQLite the one
    write lock. The row's id comes back if there is one."""
    return (
        update(model)
        .where(model.id == bindparam(key))
        .values({kept: kept})
        .returning(model.id)
        .execution_options(synchronize_session=False)
    )


#: Two revocations of an organisation's last two keys take turns, and the second sees the
#: first's: they cannot both pass the last-key check and lock it out.
_HOLD_ORGANISATION = _holding(Organisation, Organisation.name, "organisation_id")
#: A publication and an admission change of a product take turns, and each reads the row as
#: the other left it.
_HOLD_PRODUCT = _holding(Product, Product.status, "product_id")


def _published(manifest: ProductManifest, now: datetime) -> dict[str, Any]:
    """A product's columns as its manifest, published `now`, sets them."""
    return {
        "vendor_id": manifest.vendor,
        "name": manifest.name,
        "version": manifest.version,
        "clinical_area": manifest.clinical_area,
        "manifest": manifest.model_dump(mode="json"),
        "updated_at": now,
    }


def hold_product(session: Session, product_id: str) -> bool:
    """Hold the product's row for the rest of `session`'s transaction; whether there is one."""
    return session.execute(_HOLD_PRODUCT, {"product_id": product_id}).first() is not None


def published_versions(session: Session) -> dict[tuple[str, str], datetime]:
    """When each product's versions were first published in the catalogue: what evaluation
    per version and the exchange's figures both call a version the catalogue knows. A
    product's current version is published, recorded or not: during a rolling upgrade a
    replica of the previous release publishes without recording it (then by its last change,
    the latest its publication can have been)."""
    rows = session.execute(
        select(ProductRelease.product_id, ProductRelease.version, ProductRelease.published_at)
    )
    published = {(product, version): as_utc(at) for product, version, at in rows}
    for product, version, changed in session.execute(
        select(Product.id, Product.version, Product.updated_at)
    ):
        published.setdefault((product, version), as_utc(changed))
    return published


def published_as(session: Session, product_id: str, version: str) -> bool:
    """Whether the catalogue published the product's version under exactly this name, by the
    rule of `published_versions`: a version with a space at an end, published before the
    exchange refused those, goes on as named (`aifi.product_versions`). Asked only of such a
    version, so reading the two small tables whole costs the ordinary path nothing."""
    return (product_id, version) in published_versions(session)


class Catalogue:
    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        *,
        admit_on_register: bool = False,
        keys: KeyCache | None = None,
    ) -> None:
        self._db = db
        self._audit = audit
        #: This replica's verified keys, which a revocation here clears of the key at once.
        self._keys = keys if keys is not None else KeyCache()
        self._first_state = "admitted" if admit_on_register else "draft"

    # organisations -------------------------------------------------------------------------

    def create_organisation(
        self, actor: Actor | None, body: OrganisationIn
    ) -> tuple[Organisation, str]:
        """Register an organisation and return its first API key (shown once, stored hashed)."""
        if actor is not None:
            require_role(actor, OrganisationKind.operator)
        with self._db.session() as session:
            if session.get(Organisation, body.id) is not None:
                raise Conflict(f"organisation {body.id!r} already exists")
            org = Organisation(
                id=body.id, name=body.name, kind=body.kind.value, created_at=utcnow()
            )
            session.add(org)
        key = new_api_key()
        store_api_key(self._db, org.id, key, label="initial")
        if actor is not None:
            self._audit.record(actor, "create", "organisation", org.id)
        return org, key

    def rotate_key(self, actor: Actor, organisation_id: str) -> tuple[str, int]:
        """A new key for an organisation, and its id in `list_keys`: the id tells the new key
        from the old ones, which stay valid until revoked (`revoke_key`), so a gateway or
        worker changes over with no gap."""
        _own_keys(actor, organisation_id)
        with self._db.session() as session:
            if session.get(Organisation, organisation_id) is None:
                raise NotFound(f"no organisation {organisation_id!r}")
        key = new_api_key()
        key_id = store_api_key(self._db, organisation_id, key, label="rotated")
        self._audit.record(actor, "create", "api-key", organisation_id)
        return key, key_id

    def list_keys(self, actor: Actor, organisation_id: str) -> list[ApiKey]:
        """An organisation's keys, revoked ones too, oldest first: what a hand-over needs to
        tell the new key from the old. For the operator, and for an organisation its own (as
        rotating is); to any other, 404, as if the organisation did not exist."""
        with self._audit.reading(actor, "search", "api-key", organisation_id) as read:
            _own_keys(actor, organisation_id)
            if read.session.get(Organisation, organisation_id) is None:
                raise NotFound(f"no organisation {organisation_id!r}")
            keys = list(read.session.scalars(_KEYS_OF, {"organisation_id": organisation_id}))
            read.succeeded()
        return keys

    def revoke_key(self, actor: Actor, organisation_id: str, key_id: int) -> ApiKey:
        """Revoke one of an organisation's keys, for good: a leaked key otherwise works for
        ever. Revoking a revoked key answers it again, unchanged (a retry is harmless).

        Refused with 409 when it is the organisation's last live key: the hospital's gateway
        (or the operator) would be locked out with no key to rotate with, and only the
        operator could let it back in; rotate first. Who may revoke is who may rotate. This
        replica stops taking the key at once; other replicas within their
        `key_cache_seconds`, when their cache of it runs out.
        """
        subject = f"{organisation_id}/{key_id}"
        try:
            key, revoked_now = self._revoke(actor, organisation_id, key_id)
        except (NotFound, Conflict) as exc:
            self._audit.refused(actor, "delete", "api-key", subject, exc)
            raise
        if revoked_now:
            self._keys.forget(key.key_hash)
        return key

    def _revoke(self, actor: Actor, organisation_id: str, key_id: int) -> tuple[ApiKey, bool]:
        """The key, revoked in one transaction with its audit entry; whether this call did."""
        _own_keys(actor, organisation_id)
        subject = f"{organisation_id}/{key_id}"
        with self._db.session() as session:
            held = session.execute(_HOLD_ORGANISATION, {"organisation_id": organisation_id})
            if held.first() is None:
                raise NotFound(f"no organisation {organisation_id!r}")
            key = session.scalars(
                select(ApiKey).where(ApiKey.id == key_id, ApiKey.organisation_id == organisation_id)
            ).first()
            if key is None:
                raise NotFound(f"no API key {key_id} of organisation {organisation_id!r}")
            if key.revoked_at is not None:
                self._audit.record_in(
                    session, actor, "delete", "api-key", subject, detail="already revoked"
                )
                return key, False
            if not _other_live_keys(session, organisation_id, key_id):
                raise Conflict(
                    f"API key {key_id} is the last live key of organisation "
                    f"{organisation_id!r}: revoking it would lock the organisation out; "
                    f"rotate first (POST /organisations/{organisation_id}/keys), then revoke "
                    "this one"
                )
            key.revoked_at = utcnow()
            self._audit.record_in(session, actor, "delete", "api-key", subject, detail="revoked")
        return key, True

    def list_organisations(self, actor: Actor) -> list[Organisation]:
        with self._db.session() as session:
            query = select(Organisation).order_by(Organisation.id)
            if actor.role != OrganisationKind.operator:
                query = query.where(Organisation.id == actor.organisation_id)
            return list(session.scalars(query))

    # products ------------------------------------------------------------------------------

    def register_product(self, actor: Actor, manifest: ProductManifest) -> Product:
        """Create a product or publish a new version of it (vendors only for themselves)."""
        require_role(actor, OrganisationKind.vendor, OrganisationKind.operator)
        if actor.role == OrganisationKind.vendor and manifest.vendor != actor.organisation_id:
            raise Forbidden(
                f"vendor {actor.organisation_id!r} cannot register a product "
                f"of vendor {manifest.vendor!r}"
            )
        now = utcnow()
        with self._db.session() as session:
            published = functools.partial(published_as, session, manifest.id)
            if version_problem(manifest.version, "the manifest publishes", published):
                raise Invalid(
                    f"product {manifest.id!r}: version {manifest.version!r} must hold printable "
                    "characters only (no tab, line break, control or invisible character) and "
                    "no space at either end: each result's summary names it as its "
                    "product_version"
                )
            vendor = session.get(Organisation, manifest.vendor)
            if vendor is None or vendor.kind != OrganisationKind.vendor:
                raise NotFound(f"no vendor organisation {manifest.vendor!r}")
            if not hold_product(session, manifest.id):
                # The same new product published twice at once (a vendor's deployment starting
                # several workers) is one: whichever came second goes on as a publication of it.
                insert_unless_taken(session, self._new_product(manifest, now))
                hold_product(session, manifest.id)
            # Read as held: an admission change made meanwhile is seen, not written over.
            product = session.get(Product, manifest.id)
            assert product is not None  # products are never deleted
            if product.vendor_id != manifest.vendor:
                raise Conflict(f"product id {manifest.id!r} belongs to another vendor")
            # The version it has, if a replica of the release before this one published it (it
            # recorded no release): its last change is the latest its publication can have been.
            insert_unless_taken(
                session,
                ProductRelease(
                    product_id=product.id, version=product.version, published_at=product.updated_at
                ),
            )
            if product.version != manifest.version:
                if product.status == "retired":
                    raise Conflict(f"product {manifest.id!r} is retired; register a new product")
                if product.status == "admitted" and self._first_state != "admitted":
                    # A new version re-opens review; the admitted version's jobs stop meanwhile.
                    product.status = "under-review"
            for name, value in _published(manifest, now).items():
                setattr(product, name, value)
            # Kept from its first publication: a return to an earlier version is no new one,
            # and the same version published twice at once is one.
            insert_unless_taken(
                session,
                ProductRelease(product_id=manifest.id, version=manifest.version, published_at=now),
            )
        self._audit.record(
            actor, "update", "product", manifest.id, detail=f"version {manifest.version}"
        )
        return product

    def _new_product(self, manifest: ProductManifest, now: datetime) -> Product:
        return Product(
            id=manifest.id, status=self._first_state, created_at=now, **_published(manifest, now)
        )

    def get_product(self, product_id: str) -> Product:
        with self._db.session() as session:
            return find_product(session, product_id)

    def list_products(self) -> list[Product]:
        with self._db.session() as session:
            return list(session.scalars(select(Product).order_by(Product.id)))

    def visible_product(self, actor: Actor, product_id: str) -> Product:
        """The product as `actor` may read it (`seen_by`); one it may not is not found, as
        one that does not exist."""
        with self._db.session() as session:
            product = session.get(Product, product_id)
            if product is None or not _seen_by(session, actor, [product]):
                raise NotFound(f"no product {product_id!r}")
            return product

    def visible_products(self, actor: Actor) -> list[Product]:
        """The products `actor` may read (`seen_by`)."""
        with self._db.session() as session:
            return _seen_by(session, actor, session.scalars(select(Product).order_by(Product.id)))

    # subscriptions -------------------------------------------------------------------------

    def subscribe(self, actor: Actor, product_id: str) -> Subscription:
        require_role(actor, OrganisationKind.hospital)
        product = self.get_product(product_id)
        if product.status not in OPEN_PRODUCT_STATES:
            raise Forbidden(
                f"product {product_id!r} is {product.status}; only admitted products take "
                "subscriptions"
            )
        with self._db.session() as session:
            sub = subscription_of(session, actor.organisation_id, product_id)
            if sub is None:
                sub = Subscription(
                    hospital_id=actor.organisation_id,
                    product_id=product_id,
                    active=True,
                    created_at=utcnow(),
                )
                session.add(sub)
            sub.active = True
        self._audit.record(actor, "create", "subscription", f"{actor.organisation_id}/{product_id}")
        return sub

    def unsubscribe(self, actor: Actor, product_id: str) -> None:
        require_role(actor, OrganisationKind.hospital)
        with self._db.session() as session:
            sub = _own_subscription(session, actor, product_id)
            sub.active = False
        self._audit.record(actor, "delete", "subscription", f"{actor.organisation_id}/{product_id}")

    def report_routes(
        self, actor: Actor, product_id: str, routes: list[dict[str, Any]]
    ) -> Subscription:
        require_role(actor, OrganisationKind.hospital)
        with self._db.session() as session:
            sub = _own_subscription(session, actor, product_id)
            sub.routes = routes
        self._audit.record(
            actor,
            "update",
            "subscription",
            f"{actor.organisation_id}/{product_id}",
            detail=f"{len(routes)} routing rules",
        )
        return sub

    def routes_of(self, hospital_id: str, product_id: str) -> list[dict[str, Any]]:
        with self._db.session() as session:
            routes = session.scalars(
                select(Subscription.routes).where(
                    Subscription.hospital_id == hospital_id, Subscription.product_id == product_id
                )
            ).first()
        return list(routes or [])

    def list_subscriptions(self, actor: Actor) -> list[Subscription]:
        with self._db.session() as session:
            query = select(Subscription).order_by(Subscription.id)
            if actor.role == OrganisationKind.hospital:
                query = query.where(Subscription.hospital_id == actor.organisation_id)
            elif actor.role == OrganisationKind.vendor:
                query = query.join(Product, Product.id == Subscription.product_id).where(
                    Product.vendor_id == actor.organisation_id
                )
            return list(session.scalars(query))

    def is_subscribed(self, hospital_id: str, product_id: str) -> bool:
        with self._db.session() as session:
            return has_subscription(session, hospital_id, product_id)


#: An organisation's keys, in the order they were made.
_KEYS_OF = (
    select(ApiKey).where(ApiKey.organisation_id == bindparam("organisation_id")).order_by(ApiKey.id)
)


def _own_keys(actor: Actor, organisation_id: str) -> None:
    """The operator manages every organisation's keys, an organisation its own; any other
    caller gets the 404 of an organisation that does not exist, and so learns nothing."""
    if actor.role != OrganisationKind.operator and actor.organisation_id != organisation_id:
        raise NotFound(f"no organisation {organisation_id!r}")


def _other_live_keys(session: Session, organisation_id: str, key_id: int) -> int:
    """How many of the organisation's keys other than `key_id` are not revoked."""
    return int(
        session.scalar(
            select(func.count(ApiKey.id)).where(
                ApiKey.organisation_id == organisation_id,
                ApiKey.id != key_id,
                ApiKey.revoked_at.is_(None),
            )
        )
        or 0
    )


#: A product that was admitted, whatever became of it: in the national catalogue, which every
#: organisation reads. One never admitted (a draft, one under review) is its vendor's business.
CATALOGUED_STATES = frozenset({"admitted", "suspended", "retired"})


def _seen_by(session: Session, actor: Actor, products: Iterable[Product]) -> list[Product]:
    """The products `actor` may read: the operator all; a vendor its own, and others' in the
    catalogue; a hospital those in the catalogue and those it subscribes or subscribed to
    (one admitted before and back under review for a new version still routes its studies,
    and its gateway reads its manifest)."""
    if actor.role == OrganisationKind.operator:
        return list(products)
    subscribed: set[str] = set()
    if actor.role == OrganisationKind.hospital:
        subscribed = set(
            session.scalars(
                select(Subscription.product_id).where(
                    Subscription.hospital_id == actor.organisation_id
                )
            )
        )
    return [
        product
        for product in products
        if product.status in CATALOGUED_STATES
        or product.vendor_id == actor.organisation_id
        or product.id in subscribed
    ]


def find_product(session: Session, product_id: str) -> Product:
    """The product, read in the caller's transaction (a job's checks and insert share one)."""
    product = session.get(Product, product_id)
    if product is None:
        raise NotFound(f"no product {product_id!r}")
    return product


#: A product and the hospital's live subscription to it (None without one), in one statement.
_SUBSCRIBED_PRODUCT = (
    select(Product, Subscription.id)
    .outerjoin(
        Subscription,
        and_(
            Subscription.product_id == Product.id,
            Subscription.hospital_id == bindparam("hospital_id"),
            Subscription.active.is_(True),
        ),
    )
    .where(Product.id == bindparam("product_id"))
)


def subscribed_product(session: Session, hospital_id: str, product_id: str) -> tuple[Product, bool]:
    """The product, and whether the hospital holds a live subscription to it.

    Read together in the caller's transaction: a job's create checks both before its insert.
    """
    found = session.execute(
        _SUBSCRIBED_PRODUCT, {"hospital_id": hospital_id, "product_id": product_id}
    ).first()
    if found is None:
        raise NotFound(f"no product {product_id!r}")
    return found[0], found[1] is not None


def has_subscription(session: Session, hospital_id: str, product_id: str) -> bool:
    return (
        session.scalars(
            select(Subscription.id).where(
                Subscription.hospital_id == hospital_id,
                Subscription.product_id == product_id,
                Subscription.active.is_(True),
            )
        ).first()
        is not None
    )


def subscription_of(session: Session, hospital_id: str, product_id: str) -> Subscription | None:
    """The hospital's subscription to the product, live or ended (None: it never had one)."""
    return session.scalars(
        select(Subscription).where(
            Subscription.hospital_id == hospital_id, Subscription.product_id == product_id
        )
    ).first()


def _own_subscription(session: Session, actor: Actor, product_id: str) -> Subscription:
    sub = subscription_of(session, actor.organisation_id, product_id)
    if sub is None:
        raise NotFound(f"hospital {actor.organisation_id!r} has no subscription to {product_id!r}")
    return sub
