"""The replica that revokes a key refuses it from the next request on, even when a request
that read the key from the database just before the revocation committed puts it in the
replica's cache afterwards: a key revoked here is not taken back into the cache for as long
as a cached key lives."""

from __future__ import annotations

import threading

from aifi.exchange.auth import key_hash_of, verified_actor
from scale.exchange_api import Exchange, Org


def test_a_key_verified_during_its_revocation_is_not_cached_again(
    exchange: Exchange, parties: dict[str, Org]
) -> None:
    services = exchange.client.app.state.services  # type: ignore[attr-defined]
    old = parties["hospital_a"]
    response = exchange.client.post(f"/organisations/{old.id}/keys", headers=old.headers)
    new = Org(old.id, response.json()["api_key"])
    first = exchange.client.get(f"/organisations/{old.id}/keys", headers=new.headers).json()[0]
    key_hash = key_hash_of(old.key)
    services.keys.forget(key_hash)  # not cached: the next request reads the database

    read, go_on = threading.Event(), threading.Event()
    real_put = services.keys.put

    def put_late(h: str, actor: object) -> None:  # the reader between its read and its put
        if h == key_hash:
            read.set()
            go_on.wait(10)
        real_put(h, actor)

    services.keys.put = put_late
    reader = threading.Thread(target=verified_actor, args=(services.db, key_hash, services.keys))
    reader.start()
    assert read.wait(10)
    answer = exchange.client.delete(
        f"/organisations/{old.id}/keys/{first['id']}", headers=new.headers
    )
    assert answer.status_code == 200, answer.text
    go_on.set()
    reader.join(10)
    services.keys.put = real_put

    status = exchange.client.get("/products", headers=old.headers).status_code
    assert status == 401, f"the revoked key got {status} on the replica that revoked it"
