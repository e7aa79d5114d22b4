"""Fixtures that several mesh test modules use (their helpers are in ``tests/mesh/helpers.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.dns import DnsServer, serve_dns


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """A DNS server on 127.0.0.1 whose zone the test sets (``tests/dns.py``)."""
    with serve_dns() as server:
        yield server
