"""``brio mesh status|ping|topology|stats|drain|leave|remove``: ask the local node's mesh port.

The CLI speaks gRPC (``MeshAdmin``) to the node it runs beside, with that node's own TLS
identity, both taken from the same config as ``brio serve``. The node answers from its
membership table or forwards the question to the named peer. The address is ``--node``, else
the one the running node wrote to ``<data_dir>/mesh-address``, else ``[mesh] listen_addr``
(a wildcard host is dialled as 127.0.0.1, and then TLS checks the certificate against the
node id instead of the address).

``drain``, ``leave`` and ``remove`` take nodes out (docs/mesh.md, "Taking nodes out"): they
print what the node did, one line, and exit 0; a refusal is one ``brio: ...`` line and 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brio.cli.errors import CliError
from brio.cli.output import print_fields, print_table

if TYPE_CHECKING:
    from brio.config.model import BrioConfig
    from brio.mesh import pb
    from brio.mesh.methods import Method

# The config model, trio, gRPC and the generated protobuf code are imported by the functions
# that use them, so that `brio mesh --help` (and every other command) does not load them.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mesh_sub = parser.add_subparsers(dest="mesh_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="the node's config file (address and TLS identity)")
        p.add_argument("--node", help="the local node's mesh host:port (default: from config)")
        p.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
        p.add_argument("--json", action="store_true", help="print JSON")

    status = mesh_sub.add_parser("status", help="peers and their health, or one node in detail")
    status.add_argument("node_id", nargs="?", help="a node to show in detail")
    common(status)
    ping = mesh_sub.add_parser("ping", help="measure the gRPC round trip to a node")
    ping.add_argument("node_id")
    ping.add_argument("-c", "--count", type=int, default=4)
    common(ping)
    topology = mesh_sub.add_parser("topology", help="every node's view of its peers")
    common(topology)
    stats = mesh_sub.add_parser("stats", help="a node's load and counters")
    stats.add_argument("node_id", nargs="?", help="default: the local node")
    common(stats)
    drain = mesh_sub.add_parser(
        "drain", help="place no new tasks on a node; its running tasks finish"
    )
    drain.add_argument("node_id", nargs="?", help="default: the local node (others: coordinator)")
    common(drain)
    leave = mesh_sub.add_parser(
        "leave", help="the local node finishes its tasks, says goodbye to its peers and stops"
    )
    leave.add_argument(
        "--force", action="store_true", help="leave without a drain first (drains now)"
    )
    common(leave)
    remove = mesh_sub.add_parser(
        "remove", help="take another node out now; its tasks go to other nodes (coordinator)"
    )
    remove.add_argument("node_id")
    remove.add_argument("--force", action="store_true", help="required: remove acts at once")
    common(remove)


def _target(config: BrioConfig, override: str | None) -> tuple[str, str | None]:
    """The address to dial and, when it is not the node's own host, the TLS name to check."""
    from brio.config.model import split_host_port
    from brio.node.data_dir import MESH_ADDRESS_FILE

    if override:
        try:
            split_host_port(override)
        except ValueError as exc:
            raise CliError(f"--node {override!r}: {exc}") from None
        return override, None
    written = config.data_dir / MESH_ADDRESS_FILE
    address = written.read_text().strip() if written.is_file() else ""
    if not address:
        address = config.mesh.listen_addr
    host, port = split_host_port(address, allow_port_zero=True)
    if port == 0:
        raise CliError(
            "[mesh] listen_addr has port 0 and no running node wrote its address to "
            f"{written}; pass --node HOST:PORT"
        )
    if host in ("0.0.0.0", ""):
        return f"127.0.0.1:{port}", config.mesh.node_id
    if host == "::":
        return f"[::1]:{port}", config.mesh.node_id
    return address, None


async def _ask(  # noqa: PLR0917 (trio.run passes arguments by position)
    config: BrioConfig,
    address: str,
    server_name: str | None,
    method: Method,
    request: Any,
    timeout: float,
) -> Any:
    """The reply, or the ``MeshCallError``/``TLSSetupError`` that stopped it (returned, so
    that it does not come out of the loop wrapped in exception groups)."""
    from brio import aio
    from brio.mesh.tls import TLSSetupError, client_context
    from brio.mesh.transport import ChannelPool, ClusterAuth, MeshCallError, TransportStats

    secret = config.mesh.cluster_secret
    # the node's own secret signs the CLI's admin calls, as it signs the node's
    stats = TransportStats(auth=ClusterAuth(secret.get_secret_value()) if secret else None)
    async with aio.open_loop():
        try:
            pool = ChannelPool(
                client_context(config.mesh.tls),
                config.mesh.node_id,
                stats,
                tls_server_name=server_name,
            )
        except TLSSetupError as exc:
            return exc
        try:
            return await pool.unary(address, method.path, request, method.reply, timeout)
        except MeshCallError as exc:
            return exc
        finally:
            pool.close()


def _ago(unix_ms: int) -> str:
    if not unix_ms:
        return "never"
    seconds = max(0.0, time.time() - unix_ms / 1000)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def _ms(value: float) -> str:
    if not value:
        return "-"
    return f"{value:.1f}ms" if value < 10 else f"{value:.0f}ms"


def _print_status(reply: pb.StatusResponse, detail: bool) -> None:
    from brio.mesh import pb

    if detail:
        node = reply.node or pb.NodeInfo()
        row = reply.peers[0] if reply.peers else None
        load = node.workload or (row.workload if row else None) or pb.Load()
        fields: list[tuple[str, str]] = [
            ("node_id", node.node_id),
            ("address", node.address or (row.address if row else "")),
            ("role", node.role or (row.role if row else "")),
            ("status", row.status if row else "self"),
            ("last_seen", _ago(row.last_seen_unix_ms) if row else "-"),
            ("latency", _ms(row.latency_ms) if row else "-"),
            ("version", node.version or (row.version if row else "")),
            (
                "agents",
                ", ".join(a.name for a in node.agents) or ", ".join(row.agents if row else []),
            ),
            ("active_agents", str(load.active)),
            ("queued", str(load.queued)),
            ("max_agents", str(load.max_agents)),
            ("draining", "yes" if node.draining else "no"),
        ]
        if reply.lease is not None:
            fields += [
                ("lease_role", reply.lease.role),
                ("epoch", str(reply.lease.epoch)),
                ("primary", reply.lease.primary or "unknown"),
                ("lease_left", _left(reply.lease.lease_remaining)),
            ]
            if reply.lease.voters:
                fields.append(("voters", _voters(reply.lease)))
        print_fields(fields)
        return
    rows = [
        [
            p.node_id or "?",
            p.address,
            p.status,
            _ago(p.last_seen_unix_ms),
            _ms(p.latency_ms),
        ]
        for p in reply.peers
    ]
    me = reply.node or pb.NodeInfo()
    print(f"{me.node_id} ({me.role}) at {me.address}: {len(reply.peers)} peer(s)")
    if reply.lease is not None:
        print(_lease_line(reply.lease))
        if reply.lease.voters:
            print(f"voters: {_voters(reply.lease)}")
    if rows:
        print_table(["Node ID", "Address", "Status", "Last Seen", "Latency"], rows)


def _left(seconds: float) -> str:
    return "-" if seconds < 0 else f"{seconds:.1f} s"


def _lease_line(lease: pb.LeaseStatus) -> str:
    """One line about the coordinator lease, e.g. "lease: primary, epoch 4, 3.2 s left"."""
    voter = "" if lease.voter else ", not a voter"
    if lease.role == "primary":
        return f"lease: primary, epoch {lease.epoch}, {_left(lease.lease_remaining)} left{voter}"
    primary = lease.primary or "unknown"
    return f"lease: {lease.role}, epoch {lease.epoch}, primary {primary}{voter}"


def _voters(lease: pb.LeaseStatus) -> str:
    """The voter set, the store's witness named as such ("@store (the store)")."""
    nodes = [v for v in lease.voters if not v.startswith("@")]
    return ", ".join([*nodes, *(f"{v} (the store)" for v in lease.voters if v.startswith("@"))])


def _print_ping(reply: pb.PingResponse, count: int) -> None:
    for i, rtt in enumerate(reply.rtt_ms):
        print(f"reply from {reply.node_id} ({reply.address}): seq={i + 1} time={rtt:.2f} ms")
    sent = len(reply.rtt_ms) + reply.lost
    loss = 100.0 * reply.lost / sent if sent else 0.0
    answered = len(reply.rtt_ms)
    print(f"--- {reply.node_id} mesh ping: {sent} sent, {answered} answered, {loss:.0f}% lost")
    if reply.rtt_ms:
        rtts = list(reply.rtt_ms)
        print(f"rtt min/avg/max = {min(rtts):.2f}/{sum(rtts) / len(rtts):.2f}/{max(rtts):.2f} ms")


def _print_topology(reply: pb.TopologyResponse) -> None:
    from brio.mesh import pb

    print_table(
        ["Node ID", "Role", "Address", "Active", "Max"],
        [
            [
                n.node_id,
                n.role,
                n.address,
                str((n.workload or pb.Load()).active),
                str((n.workload or pb.Load()).max_agents),
            ]
            for n in reply.nodes
        ],
    )
    print()
    print_table(
        ["From", "To", "Status", "Latency"],
        [[e.from_node, e.to_node, e.status, _ms(e.latency_ms)] for e in reply.edges],
    )
    if reply.unreachable:
        print(f"\nno view from: {', '.join(reply.unreachable)}")


def _print_stats(reply: pb.StatsResponse) -> None:
    from brio.mesh import pb

    load = reply.workload or pb.Load()
    fields = [
        ("node_id", reply.node_id),
        ("role", reply.role),
        ("uptime", f"{reply.uptime_seconds:.0f}s"),
        ("active_agents", str(load.active)),
        ("queued", str(load.queued)),
        ("max_agents", str(load.max_agents)),
        ("tasks_run", str(reply.tasks_run)),
        ("tasks_running", str(reply.tasks_running)),
        ("tasks_succeeded", str(reply.tasks_succeeded)),
        ("tasks_failed", str(reply.tasks_failed)),
        ("tasks_cancelled", str(reply.tasks_cancelled)),
        ("mean_task_time", _ms(reply.mean_task_ms)),
        ("calls_received", str(reply.calls_received)),
        ("calls_sent", str(reply.calls_sent)),
        ("call_errors", str(reply.call_errors)),
        ("heartbeats_received", str(reply.heartbeats_received)),
        ("bytes_received", str(reply.bytes_received)),
        ("bytes_sent", str(reply.bytes_sent)),
        ("refused_connections", str(reply.refused_connections)),
        ("oversized_requests", str(reply.oversized_requests)),
        ("malformed_requests", str(reply.malformed_requests)),
        ("agents", ", ".join(reply.agents)),
    ]
    print_fields(fields)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except CliError as exc:
        print(f"brio: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `brio mesh status --json | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(args: argparse.Namespace) -> int:
    import betterproto2
    import trio

    from brio.config.errors import ConfigError
    from brio.config.load import load_config
    from brio.mesh import methods, pb
    from brio.mesh.tls import TLSSetupError
    from brio.mesh.transport import MeshCallError

    try:
        loaded = load_config(Path(args.config) if args.config else None, os.environ)
    except ConfigError as exc:
        raise CliError(f"invalid configuration:\n{exc}") from None
    config = loaded.config
    if args.timeout <= 0:
        raise CliError(f"--timeout: expected a positive number of seconds, got {args.timeout}")
    address, server_name = _target(config, args.node)
    command: str = args.mesh_command
    request: Any
    method: Method
    show: Callable[[Any], None]
    if command == "status":
        request = pb.StatusRequest(node_id=args.node_id or "")
        method = methods.STATUS
        show = lambda r: _print_status(r, bool(args.node_id))  # noqa: E731
    elif command == "ping":
        if not 1 <= args.count <= 100:
            raise CliError(f"--count: expected 1 to 100, got {args.count}")
        request = pb.PingRequest(node_id=args.node_id, count=args.count)
        method = methods.PING
        show = lambda r: _print_ping(r, args.count)  # noqa: E731
    elif command == "topology":
        request = pb.TopologyRequest()
        method = methods.TOPOLOGY
        show = _print_topology
    elif command == "stats":
        request = pb.StatsRequest(node_id=args.node_id or "")
        method = methods.STATS
        show = _print_stats
    else:
        request = pb.NodeRequest(
            node_id=getattr(args, "node_id", None) or "", force=getattr(args, "force", False)
        )
        method = methods.ADMIN[command.capitalize()]
        show = lambda r: print(r.message)  # noqa: E731
    timeout = args.timeout + (0.2 * getattr(args, "count", 0))
    if command == "leave":  # the node's running tasks get shutdown_grace, then goodbyes
        timeout += config.server.shutdown_grace + 10.0
    reply = trio.run(_ask, config, address, server_name, method, request, timeout)
    if isinstance(reply, TLSSetupError):
        raise CliError(str(reply))
    if isinstance(reply, MeshCallError):
        if reply.kind == "rejected":
            raise CliError(reply.detail.split(": ", 1)[-1])
        raise CliError(
            f"cannot reach the node's mesh port at {address}: {reply.detail} "
            "(is `brio serve` running with [mesh] enabled = true? see --node and --config)"
        )
    if args.json:
        data = reply.to_dict(
            output_format=betterproto2.OutputFormat.PYTHON,
            casing=betterproto2.Casing.SNAKE,
            include_default_values=True,
        )
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        show(reply)
    return 0
