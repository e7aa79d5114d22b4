"""``brio certs init|issue``: a private CA and node certificates for mTLS on the mesh.

    brio certs init [--dir DIR] [--days N] [--force]
    brio certs issue NODE_ID [--dir DIR] [--ip IP ...] [--dns NAME ...] [--days N] [--force]

Errors are one line, ``brio: <message>`` on stderr, exit code 1.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import tomli_w

from brio.certs import CA_DAYS, NODE_DAYS, CertsError, describe, issue_node_cert, make_ca

DEFAULT_DIR = "./certs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    certs_sub = parser.add_subparsers(dest="certs_command", metavar="ACTION", required=True)

    init = certs_sub.add_parser("init", help="create a CA: DIR/ca.crt and DIR/ca.key")
    init.add_argument("--dir", default=DEFAULT_DIR, help=f"where to write (default: {DEFAULT_DIR})")
    init.add_argument("--days", type=int, default=CA_DAYS, help=f"validity (default: {CA_DAYS})")
    init.add_argument("--force", action="store_true", help="replace an existing CA")

    issue = certs_sub.add_parser(
        "issue", help="sign a node certificate: DIR/NODE_ID.crt and DIR/NODE_ID.key"
    )
    issue.add_argument("node_id", metavar="NODE_ID", help="the node's [mesh] node_id")
    issue.add_argument(
        "--dir", default=DEFAULT_DIR, help=f"the CA's directory (default: {DEFAULT_DIR})"
    )
    issue.add_argument(
        "--ip",
        action="append",
        default=[],
        metavar="IP",
        help="an IP address peers dial this node by (repeatable)",
    )
    issue.add_argument(
        "--dns",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name peers dial this node by (repeatable; NODE_ID is always included)",
    )
    issue.add_argument(
        "--days", type=int, default=NODE_DAYS, help=f"validity (default: {NODE_DAYS})"
    )
    issue.add_argument("--force", action="store_true", help="replace existing files")


def run(args: argparse.Namespace) -> int:
    try:
        if args.certs_command == "init":
            return _init(args)
        return _issue(args)
    except CertsError as exc:
        print(f"brio: {exc}", file=sys.stderr)
        return 1


def _init(args: argparse.Namespace) -> int:
    paths = make_ca(Path(args.dir), days=args.days, force=args.force)
    print(f"wrote {paths.cert} (CA certificate: {describe(paths.cert)})")
    print(f"wrote {paths.key} (CA private key, mode 0600: keep it off the nodes and secret)")
    print()
    print("next, for each node:")
    print(f"  brio certs issue NODE_ID --dir {shlex.quote(args.dir)} --ip ADDRESS")
    return 0


def _issue(args: argparse.Namespace) -> int:
    paths = issue_node_cert(
        Path(args.dir), args.node_id, ips=args.ip, dns=args.dns, days=args.days, force=args.force
    )
    ca_file = Path(args.dir) / "ca.crt"
    print(f"wrote {paths.cert} ({describe(paths.cert)})")
    print(f"wrote {paths.key} (private key, mode 0600)")
    print()
    node_id = tomli_w.dumps({"node_id": args.node_id}).strip()
    print(
        f"copy {paths.cert.name}, {paths.key.name} and {ca_file.name} to the node, set "
        f"[mesh] {node_id} there, and use (with the paths on the node):"
    )
    print()
    tls = {
        "enabled": True,
        "cert_file": str(paths.cert.resolve()),
        "key_file": str(paths.key.resolve()),
        "ca_file": str(ca_file.resolve()),
        "verify_client": True,
    }
    print(tomli_w.dumps({"mesh": {"tls": tls}}), end="")
    return 0
