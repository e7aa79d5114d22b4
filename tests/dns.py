"""A real DNS server on loopback for the discovery tests: dnslib, in a thread, on a free UDP port.

``serve_dns()`` runs it with a ``Zone`` whose records the test replaces while discovery runs;
the ``dns_server`` fixture (``tests/mesh/conftest.py``) wraps it for the mesh tests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dnslib
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class Zone(BaseResolver):  # type: ignore[misc]
    """An authoritative-looking zone whose records the test replaces at will."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: dict[str, list[Any]] = {}
        self.servfail = False

    def set(self, records: dict[str, list[Any]]) -> None:
        with self.lock:
            self.records = {name.lower().rstrip("."): list(rds) for name, rds in records.items()}

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        qname = request.q.qname
        qtype = dnslib.QTYPE[request.q.qtype]
        with self.lock:
            if self.servfail:
                reply.header.rcode = dnslib.RCODE.SERVFAIL
                return reply
            rdatas = self.records.get(str(qname).lower().rstrip("."))
        if rdatas is None:
            reply.header.rcode = dnslib.RCODE.NXDOMAIN
            return reply
        for rdata in rdatas:
            if type(rdata).__name__ == qtype:
                reply.add_answer(dnslib.RR(qname, getattr(dnslib.QTYPE, qtype), rdata=rdata, ttl=5))
        return reply


@dataclass
class DnsServer:
    zone: Zone
    address: str  # "127.0.0.1:PORT", as dns_servers takes it


@contextmanager
def serve_dns() -> Iterator[DnsServer]:
    zone = Zone()
    quiet = DNSLogger(prefix=False, logf=lambda _text: None)
    server = DNSServer(zone, address="127.0.0.1", port=0, logger=quiet)
    # like server.start_thread(), with a short poll so that stopping takes no 0.5 s
    thread = threading.Thread(target=server.server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield DnsServer(zone, f"127.0.0.1:{server.server.server_address[1]}")
    finally:
        server.stop()
        server.server.server_close()
        thread.join(5)
