"""Fixtures for gateway tests: the national path on one machine (see support.national), and
the way out of a hospital's network to it: the hospital's HTTP proxy and the exchange's TLS load
balancer, whose certificate a CA of the test's own issued."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from scale.servers import Nginx, Proxy, start_proxy, start_tls_balancer
from support.hospital import Hospital
from support.national import National, national_path


@pytest.fixture
def national(tmp_path: Path) -> Iterator[National]:
    with national_path(tmp_path) as path:
        yield path


@pytest.fixture
def hospital(national: National, tmp_path: Path) -> Iterator[Hospital]:
    """A gateway driven step by step against `national`, the network to it in the test's
    hands (support.hospital)."""
    opened = Hospital(national, tmp_path)
    yield opened
    opened.close()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    """The CA in a PEM file, as a hospital whose proxy inspects TLS would hand it out."""
    path = tmp_path / "hospital-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def balancer(national: National, ca: trustme.CA, tmp_path: Path) -> Iterator[Nginx]:
    """docs/deploy.md's nginx, with TLS, in front of the national exchange."""
    nginx = start_tls_balancer(tmp_path / "nginx", [national.exchange.port], ca)
    yield nginx
    nginx.stop()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    started = start_proxy(tmp_path / "proxy")
    yield started
    started.stop()
