"""Real certificates for tests: one private CA and a certificate per node, made by brio.certs.

    certs = make_cluster_certs(tmp_path / "certs", {"node-a": ["127.0.0.1"], "node-b": []})
    config = {"mesh": {"tls": tls_config(certs, "node-a")}}

Each node certificate has CN=NODE_ID and the SANs DNS:NODE_ID plus the IPs given. EC P-256
keys make this a few milliseconds per node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brio.certs import CertPaths, issue_node_cert, make_ca


@dataclass(frozen=True)
class ClusterCerts:
    dir: Path
    ca: CertPaths
    nodes: dict[str, CertPaths] = field(default_factory=dict)

    def node(self, node_id: str) -> CertPaths:
        return self.nodes[node_id]


def make_cluster_certs(dir: Path, nodes: dict[str, list[str]]) -> ClusterCerts:
    """A new CA in ``dir`` and a certificate for each node id, with those IP SANs."""
    ca = make_ca(dir)
    issued = {node_id: issue_node_cert(dir, node_id, ips=ips) for node_id, ips in nodes.items()}
    return ClusterCerts(dir=dir, ca=ca, nodes=issued)


def tls_config(c: ClusterCerts, node_id: str, verify_client: bool = True) -> dict[str, Any]:
    """The ``[mesh.tls]`` section for ``node_id`` as a dict (paths as strings, TOML-ready)."""
    paths = c.nodes[node_id]
    return {
        "enabled": True,
        "cert_file": str(paths.cert),
        "key_file": str(paths.key),
        "ca_file": str(c.ca.cert),
        "verify_client": verify_client,
    }
