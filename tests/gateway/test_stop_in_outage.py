"""A gateway stopped (a restart for an upgrade, a host shutting down) while the exchange is
out of reach ends its calls to the exchange at once, rather than ride out each call's
retries (about 20 s) first: what they were doing is in its state, and done again at the
next start."""

from __future__ import annotations

from pathlib import Path

from aifi.gateway.config import load_config
from aifi.gateway.service import Gateway
from aifi.http import RETRIES
from scale.servers import bad_gateway, wait_for
from support.national import National, gateway_config
from support.peers import free_port


def test_a_gateway_stopped_while_the_exchange_is_down_tries_its_calls_no_more(
    national: National, tmp_path: Path
) -> None:
    port = national.exchange.port
    path = gateway_config(
        tmp_path / "gateway", national, free_port(), national.pacs().dicom_port, 0.3
    )
    national.stop_workers()  # only the gateway talks to the exchange here
    national.exchange.stop()
    with bad_gateway(port, national.hospital_key) as balancer:
        gateway = Gateway(load_config(path))
        gateway.start()
        # A call under way, riding out the outage with its retries.
        wait_for(lambda: balancer.requests >= 1, timeout=60, what="the gateway to ask")
        at_stop = balancer.requests
        gateway.stop()
        after = balancer.requests - at_stop
    assert not [t for t in gateway._threads if t.is_alive()]
    # Of each thread that talks to the exchange (the results poll, the sender), at most a
    # try in flight as the stop came and one begun as it was being asked for; not the rest
    # of a back-off of RETRIES tries each.
    assert after <= 4 < RETRIES, after
