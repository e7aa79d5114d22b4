"""The mesh's gRPC methods, read from the generated service bases: one source for every path.

A path such as ``/brio.mesh.v1.Mesh/Call`` and its request and reply types are facts of
``proto/brio/mesh/v1/mesh.proto``. The generated ``MeshBase`` and ``MeshAdminBase`` already
hold them in their ``__mapping__``; this module reads them from there once, so that servers,
clients, the CLI and the benchmarks name a method by a constant instead of spelling its path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from brio.mesh import pb


@dataclass(frozen=True)
class Method:
    """One unary gRPC method: its wire path and message types."""

    path: str
    request: type[Any]
    reply: type[Any]

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[1]


def _read(base: type[Any]) -> dict[str, Method]:
    mapping = base().__mapping__()
    methods = [Method(path, h.request_type, h.reply_type) for path, h in mapping.items()]
    return {m.name: m for m in methods}


#: ``Mesh``: what nodes call on each other.
MESH = _read(pb.MeshBase)
#: ``MeshAdmin``: what the CLI (and a coordinator, for its peers) asks a node.
ADMIN = _read(pb.MeshAdminBase)

CALL = MESH["Call"]
HEARTBEAT = MESH["Heartbeat"]
VOTE = MESH["Vote"]
RENEW = MESH["Renew"]

STATUS = ADMIN["Status"]
PING = ADMIN["Ping"]
TOPOLOGY = ADMIN["Topology"]
STATS = ADMIN["Stats"]
DRAIN = ADMIN["Drain"]
LEAVE = ADMIN["Leave"]
REMOVE = ADMIN["Remove"]
