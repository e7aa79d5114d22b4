"""Typed configuration: one pydantic model per TOML section of the deployment guide.

Unknown keys are refused everywhere (``extra="forbid"``) so that a typo fails at start instead
of being silently ignored. Cross-field checks that need the whole file (a multi-node mesh on
SQLite, TLS without certificates) live in ``BrioConfig``'s validator; their messages name the
key at fault.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_core import PydanticCustomError

# not from brio.core.lease and brio.core.witness: importing those loads the lease's machine
from brio.core.constants import MAX_TERM, WITNESS_ID

Seconds = Annotated[float, Field(gt=0)]


#: The pydantic error type raised by ``BrioConfig``'s cross-field check. Its context carries
#: ``problems``: a tuple of ``Conflict`` so that each one can be reported against its own key.
CONFLICT_ERROR_TYPE = "brio_config_conflict"

_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")


def split_host_port(text: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6), with a message that says what is wrong.

    Port 0 is only meaningful for addresses we listen on (the OS picks a free port, which
    tests use); a peer's address needs a real port.
    """
    example = "expected host:port, e.g. '10.0.1.2:50051'"
    if any(char.isspace() for char in text):
        raise ValueError(f"it contains whitespace; {example}")
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise ValueError(f"{example} (an IPv6 host is written '[::1]:50051')")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} inside [...] is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"the ':port' is missing; {example}")
        if ":" in host:
            raise ValueError(f"an IPv6 host needs brackets, e.g. '[::1]:50051'; {example}")
        if not host:
            raise ValueError(f"the host before ':' is missing; {example}")
        if not _HOSTNAME.match(host):
            raise ValueError(f"{host!r} is not a valid host name or IP address")
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"the port {port_text!r} is not a number; {example}")
    port = int(port_text)
    lowest = 0 if allow_port_zero else 1
    if not lowest <= port <= 65535:
        raise ValueError(f"the port {port} is out of range ({lowest}-65535)")
    return host, port


class Conflict(NamedTuple):
    """A problem that involves several keys: reported at ``loc``, caused by ``involved``."""

    loc: tuple[str, ...]
    message: str
    involved: tuple[tuple[str, ...], ...] = ()


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _default_node_id() -> str:
    return socket.gethostname() or "brio-node"


class ServerConfig(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    websocket_enabled: bool = True
    auth_token: SecretStr | None = None
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    max_ws_message_bytes: int = Field(default=65_536, gt=0)
    shutdown_grace: Seconds = 10.0
    # Browser origins (scheme://host[:port]) besides the node's own that may send writes and
    # open /ws; requests without an Origin header (curl, the CLI) are not concerned.
    allowed_origins: list[str] = Field(default_factory=list)

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        from urllib.parse import urlsplit

        for item in value:
            try:
                parts = urlsplit(item)
                parts.port  # noqa: B018 (raises on a bad port)
            except ValueError:
                parts = None
            if (
                parts is None
                or parts.scheme not in ("http", "https")
                or not parts.hostname
                or parts.path not in ("", "/")
                or parts.query
                or parts.fragment
                or "@" in parts.netloc
            ):
                raise ValueError(
                    f"{item!r}: an origin is scheme://host[:port] with scheme http or https "
                    "and no path ('http://localhost:3000', 'https://app.example.com')"
                )
        return value


def _not_reserved(value: str) -> str:
    """Node ids starting with "@" are reserved for voters that are not nodes (the store)."""
    if value.startswith("@"):
        raise ValueError(
            f"a node id cannot start with '@' (got {value!r}): such ids are reserved for "
            f"voters that are not nodes, such as {WITNESS_ID!r}, the store ([mesh.lease] witness)"
        )
    return value


class PeerConfig(Section):
    id: str | None = None  # learned from the first heartbeat when not given
    address: str
    role: Literal["coordinator", "worker"] = "worker"

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | None) -> str | None:
        return None if value is None else _not_reserved(value)

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_host_port(value)
        return value


class DiscoveryConfig(Section):
    method: Literal["static", "dns", "kubernetes"] = "static"
    refresh_interval: Seconds = 60.0
    dns_name: str | None = None
    hosted_zone: str | None = None
    k8s_namespace: str | None = None
    k8s_label_selector: str | None = None
    port: int = Field(default=50051, ge=1, le=65535)
    # Where to ask: empty means the system resolver (dns) or the in-cluster defaults
    # (kubernetes: $KUBERNETES_SERVICE_HOST/PORT and the pod's service-account files).
    dns_servers: list[str] = Field(default_factory=list)
    k8s_api_url: str | None = Field(default=None, pattern=r"^https?://")
    k8s_token_file: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    k8s_ca_file: Path | None = Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")

    @field_validator("dns_servers")
    @classmethod
    def _dns_servers(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_address(item)
                continue
            except ValueError:
                pass
            host, _ = split_host_port(item)
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(
                    f"{item!r}: a DNS server is an IP address, optionally with a port "
                    "('10.0.0.2', '127.0.0.1:5353', '[::1]:53')"
                ) from None
        return value


class TLSConfig(Section):
    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    verify_client: bool = False


class WeightConfig(Section):
    node_id: str
    weight: int = Field(ge=0)


class LoadBalancingConfig(Section):
    strategy: Literal["round-robin", "least-connections", "weighted", "consistent-hash"] = (
        "round-robin"
    )
    weights: list[WeightConfig] = Field(default_factory=list)


class FailureDetectionConfig(Section):
    heartbeat_interval: Seconds = 30.0
    heartbeat_timeout: Seconds = 10.0
    suspicion_threshold: int = Field(default=3, ge=1)
    auto_remove_failed: bool = True
    remove_delay: Annotated[float, Field(ge=0)] = 300.0
    # A peer whose smoothed heartbeat round trip is above this is shown as degraded (slow).
    degraded_latency: Seconds = 0.25


#: Below this a lease expires on ordinary network delays: the primary renews every third of it.
MIN_LEASE_DURATION = 0.3
#: The default ``[mesh.lease] max_term_jump``: at one election a second, about 28 hours of
#: elections that a node missed; a larger jump is an attack or a bug.
MAX_TERM_JUMP = 100_000


class LeaseConfig(Section):
    """The coordinator lease (``brio.core.lease``): who may vote, and its timing."""

    # 1.2 s and [0.1, 0.3]: kill -9 to a new primary that placed a task in about 1.25 s
    # (0.9-1.5 s plus a few round trips), and a primary rides out a 0.74 s stall of its event
    # loop (at most 0.26 s seen in 10 minutes of a saturated 2-core machine; 1-1.5 s before the
    # asyncio callbacks ran together and cancelled timers were dropped); docs/lease.md,
    # Failover time, derives and measures both.
    lease_duration: Seconds = 1.2
    # A follower waits a random pick from [min, max] seconds after the primary's lease would
    # have run out before it asks for votes; the spread keeps two candidates from tying.
    election_timeout: tuple[float, float] = (0.1, 0.3)
    # How much faster one node's clock may run than another's (0.05: 5 %); the primary
    # shortens its own lease by this fraction.
    max_clock_drift: float = Field(default=0.05, ge=0, lt=0.5)
    # Node ids; None: this node plus every [[mesh.peers]] entry that names an id.
    voters: list[str] | None = None
    # A lease message whose term is more than this above the receiver's own is refused and
    # logged as an attack (terms grow by one per election; docs/lease.md, Authentication).
    max_term_jump: int = Field(default=MAX_TERM_JUMP, ge=1, le=MAX_TERM)
    # The shared database as one more voter (brio.core.witness, docs/lease.md): "store" always,
    # "off" never, "auto" when the voters are an even number (two coordinators: three voters).
    witness: Literal["auto", "store", "off"] = "off"

    @field_validator("lease_duration")
    @classmethod
    def _long_enough(cls, value: float) -> float:
        if value < MIN_LEASE_DURATION:
            raise ValueError(
                f"expected at least {MIN_LEASE_DURATION} seconds: the primary renews every "
                "third of the lease, and a shorter one runs out on ordinary network delays"
            )
        return value

    @field_validator("election_timeout", mode="before")
    @classmethod
    def _pair(cls, value: object) -> object:
        # Checked before pydantic's own tuple parsing, whose messages speak of "a valid
        # tuple" and "items after validation"; a TOML true would quietly become 1.0.
        example = "expected [min, max] in seconds, e.g. [1.0, 2.5]"
        if not isinstance(value, list | tuple):
            raise ValueError(example)
        if len(value) != 2:
            raise ValueError(f"{example}: two numbers, not {len(value)}")
        if any(isinstance(item, bool) for item in value):
            raise ValueError(f"{example}: numbers, not true or false")
        return value

    @field_validator("election_timeout")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        wanted = "expected [min, max] in seconds with 0 < min <= max"
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"{wanted}, both finite")
        if low <= 0:
            raise ValueError(f"min {low:g} is not above 0; {wanted}")
        if low > high:
            raise ValueError(f"min {low:g} is above max {high:g}; {wanted}")
        return value

    @field_validator("voters")
    @classmethod
    def _voter_ids(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError(
                "expected at least one node id; leave voters out to use this node and "
                "every [[mesh.peers]] id"
            )
        for position, item in enumerate(value, start=1):
            if not item:
                raise ValueError(f"voter {position} is empty; expected a node id")
            if item.startswith("@"):
                raise ValueError(
                    f"voter {position} ({item!r}) starts with '@': ids that do are reserved; "
                    f"the store votes as {WITNESS_ID!r} through [mesh.lease] witness, not voters"
                )
        doubled = sorted(item for item, count in Counter(value).items() if count > 1)
        if doubled:
            raise ValueError(f"each node id may be listed once; repeated: {', '.join(doubled)}")
        return value


class AccessControlConfig(Section):
    coordinator_only_endpoints: list[str] = Field(default_factory=list)
    allowed_cidrs: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(default_factory=list)


class MeshConfig(Section):
    enabled: bool = False
    node_id: str = Field(default_factory=_default_node_id, min_length=1)
    listen_addr: str = "0.0.0.0:50051"

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, value: str) -> str:
        return _not_reserved(value)

    # The host:port other nodes dial to reach this one; default: listen_addr, with a
    # wildcard host (0.0.0.0, ::) replaced by this machine's host name.
    advertise_addr: str | None = None
    role: Literal["coordinator", "worker"] = "coordinator"
    # Every mesh call has a deadline; a request above the size cap is refused unread.
    call_timeout: Seconds = 30.0
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    max_agents: int = Field(default=32, ge=1)
    session_affinity: bool = False
    affinity_ttl: Seconds = 3600.0
    # The guide: a coordinator "can run agents locally"; false keeps them for workers.
    coordinators_run_agents: bool = True
    peers: list[PeerConfig] = Field(default_factory=list)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    tls: TLSConfig = Field(default_factory=TLSConfig)
    load_balancing: LoadBalancingConfig = Field(default_factory=LoadBalancingConfig)
    failure_detection: FailureDetectionConfig = Field(default_factory=FailureDetectionConfig)
    lease: LeaseConfig = Field(default_factory=LeaseConfig)
    access_control: AccessControlConfig = Field(default_factory=AccessControlConfig)
    # Without TLS: the shared key that authenticates lease, admin and peer calls (an
    # HMAC-SHA256 of each request); every node of the cluster needs the same one.
    cluster_secret: SecretStr | None = None
    # A multi-node mesh with neither TLS nor cluster_secret starts only with this set:
    # anyone who can reach the mesh port can then act as any node.
    insecure: bool = False
    # What one connection to the mesh port may hold (brio.mesh.transport.ConnectionLimits).
    max_streams_per_connection: int = Field(default=100, ge=1, le=10_000)
    max_resets_per_second: int = Field(default=100, ge=1)
    connection_idle_timeout: Seconds = 300.0
    max_connections_per_address: int = Field(default=32, ge=1)
    tls_handshake_timeout: Seconds = 5.0

    @property
    def multi_node(self) -> bool:
        """Whether this node expects peers: a static list or a discovery method."""
        return bool(self.peers) or self.discovery.method != "static"

    @property
    def authenticated(self) -> bool:
        """Whether peers' calls are authenticated: mTLS, or a cluster secret."""
        tls = self.tls.enabled and self.tls.verify_client
        return tls or self.cluster_secret is not None

    def insecure_warning(self) -> str | None:
        """The loud warning of a mesh whose calls nobody authenticates, or None."""
        if not self.enabled or not self.multi_node or self.authenticated:
            return None
        if self.tls.enabled:
            return (
                "[mesh.tls] verify_client = false and no [mesh] cluster_secret: peers' "
                "lease and admin calls are not authenticated; anyone who can reach the mesh "
                "port can act as any node. Set verify_client = true or cluster_secret"
            )
        return (
            "INSECURE MESH: [mesh] insecure = true, without [mesh.tls] or [mesh] "
            "cluster_secret: anyone who can reach the mesh port can act as any node "
            "(name a primary, drain nodes, run agents). Set cluster_secret or enable TLS"
        )

    @field_validator("listen_addr")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_host_port(value, allow_port_zero=True)
        return value

    @field_validator("advertise_addr")
    @classmethod
    def _advertise(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value

    def lease_voters(self) -> frozenset[str]:
        """The nodes whose majority elects and renews the primary coordinator.

        Taken from the file only, never from discovery: every node must compute the same set
        (lease messages carry a digest of it), and a set that grew with whatever DNS answered
        would let two majorities of different sets elect two primaries.
        """
        if self.lease.voters is not None:
            nodes = frozenset(self.lease.voters)
        else:
            nodes = frozenset([self.node_id, *(peer.id for peer in self.peers if peer.id)])
        return nodes | {WITNESS_ID} if self.witness_on(nodes) else nodes

    def witness_on(self, nodes: frozenset[str] | None = None) -> bool:
        """Whether the store votes (``[mesh.lease] witness``): "auto" turns it on for an even
        number of node voters, whose majority cannot lose one of them; an odd number plus
        the store would be even again, and gain nothing."""
        if self.lease.witness != "auto":
            return self.lease.witness == "store"
        if nodes is None:
            nodes = self.lease_voters() - {WITNESS_ID}
        return len(nodes) % 2 == 0

    def lease_voters_warning(self) -> str | None:
        """Why the default voter set may not be what the operator meant, or None."""
        if self.lease.voters is not None:
            return None
        unnamed = [peer.address for peer in self.peers if not peer.id]
        if unnamed:
            return (
                f"[mesh.lease] voters is not set, and peers {', '.join(unnamed)} have no id, so "
                "they do not vote; give them an id in [[mesh.peers]] or set voters"
            )
        if self.discovery.method != "static":
            return (
                f"[mesh.lease] voters is not set: nodes found by {self.discovery.method} "
                "discovery do not vote; with several coordinators, set voters on every node"
            )
        return None

    def lease_candidates(self) -> frozenset[str]:
        """The coordinators the file knows of: the nodes that may become primary."""
        found = {peer.id for peer in self.peers if peer.id and peer.role == "coordinator"}
        if self.role == "coordinator":
            found.add(self.node_id)
        return frozenset(found)


class AgentConfig(Section):
    kind: Literal["echo", "sleep", "shell", "llm"] | None = None
    entrypoint: str | None = Field(default=None, pattern=r"^[\w.]+:[\w.]+$")
    description: str = ""
    timeout: Seconds | None = None
    node_affinity: list[str] = Field(default_factory=list)
    # llm
    provider: str | None = None
    model: str | None = None
    system_prompt: str | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    # shell
    allowed_commands: list[str] = Field(default_factory=list)
    command_timeout: Seconds = 30.0
    max_output_bytes: int = Field(default=65_536, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> AgentConfig:
        if self.kind is not None and self.entrypoint is not None:
            raise ValueError("give either 'kind' or 'entrypoint', not both")
        return self


class ProviderConfig(Section):
    base_url: str = Field(pattern=r"^https?://")
    api_key: SecretStr | None = None
    default_model: str | None = None
    timeout: Seconds = 60.0
    max_retries: int = Field(default=3, ge=0)


_DATABASE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")


class DatabaseConfig(Section):
    url: str | None = None  # default: sqlite under data_dir
    max_connections: int = Field(default=10, ge=1)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith(_DATABASE_SCHEMES):
            scheme = value.partition(":")[0] or value[:20]
            raise ValueError(
                f"unsupported database {scheme!r}; expected sqlite:///PATH or "
                "postgresql://USER:PASSWORD@HOST:PORT/DB"
            )
        return value


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    format: Literal["text", "json"] = "text"


class TelemetryConfig(Section):
    enabled: bool = False
    exporter: Literal["otlp", "console", "none"] = "otlp"
    endpoint: str | None = None
    service_name: str = "brio"
    propagation: Literal["trace-context", "b3", "jaeger"] = "trace-context"
    tags: dict[str, str] = Field(default_factory=dict)


class MeshMetricsConfig(Section):
    collect_peer_latency: bool = True
    collect_routing_stats: bool = True


class MetricsConfig(Section):
    enabled: bool = False
    endpoint: str = "0.0.0.0:9090"
    path: str = Field(default="/metrics", pattern=r"^/")
    mesh: MeshMetricsConfig = Field(default_factory=MeshMetricsConfig)

    @field_validator("endpoint")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_host_port(value, allow_port_zero=True)
        return value


class BrioConfig(Section):
    data_dir: Path = Path("./brio-data")
    server: ServerConfig = Field(default_factory=ServerConfig)
    mesh: MeshConfig = Field(default_factory=MeshConfig)
    agents: dict[str, AgentConfig] = Field(default_factory=dict)
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    @model_validator(mode="after")
    def _consistent(self) -> BrioConfig:
        conflicts = find_conflicts(self)
        if conflicts:
            summary = "; ".join(f"{'.'.join(c.loc)}: {c.message}" for c in conflicts)
            raise PydanticCustomError(
                CONFLICT_ERROR_TYPE, "{summary}", {"summary": summary, "problems": conflicts}
            )
        return self

    @property
    def database_url(self) -> str:
        """The effective database URL (SQLite under ``data_dir`` unless one is given)."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{self.data_dir / 'brio.db'}"

    @property
    def database_backend(self) -> Literal["sqlite", "postgresql"]:
        url = self.database_url
        postgres = url.lower().startswith(("postgresql://", "postgres://"))
        return "postgresql" if postgres else "sqlite"

    def not_in_effect(self) -> list[str]:
        """Settings that are accepted but do nothing yet, each as a sentence to show."""
        found = []
        for key, section in (("telemetry", self.telemetry), ("metrics", self.metrics)):
            if section.model_fields_set:
                found.append(
                    f"[{key}] is set but not in effect yet: this version has no "
                    f"{'tracing exporter' if key == 'telemetry' else 'metrics endpoint'}"
                )
        return found


def find_conflicts(config: BrioConfig) -> tuple[Conflict, ...]:
    """Check what no single section can check alone; each problem names the key to change.

    Side effect, on purpose: an ``llm`` agent without ``provider`` gets the only configured
    provider written into it, so that everyone downstream sees the choice that was made.
    File paths are not checked for existence here: that is the server's job at start.
    """
    found: list[Conflict] = []
    mesh = config.mesh
    multi_node = bool(mesh.peers) or mesh.discovery.method != "static"
    if mesh.enabled and multi_node and config.database_backend == "sqlite":
        if mesh.peers:
            why = f"[mesh] enabled = true with {len(mesh.peers)} peer(s) in [[mesh.peers]]"
            cause: tuple[str, ...] = ("mesh", "peers")
        else:
            why = f"[mesh] enabled = true with [mesh.discovery] method = {mesh.discovery.method!r}"
            cause = ("mesh", "discovery", "method")
        found.append(
            Conflict(
                ("database", "url"),
                "a multi-node mesh needs PostgreSQL: set [database] url = 'postgresql://...' "
                f"(or BRIO_DATABASE_URL); {why}, but the database is SQLite",
                (("mesh", "enabled"), cause),
            )
        )
    # (A multi-node mesh on SQLite is refused above already.)
    if (
        mesh.enabled
        and not multi_node
        and mesh.witness_on()
        and config.database_backend == "sqlite"
    ):
        voters = sorted(mesh.lease_voters() - {WITNESS_ID})
        why = (
            "witness = 'store'"
            if mesh.lease.witness == "store"
            else f"witness = 'auto' and an even number of voters ({', '.join(voters)})"
        )
        found.append(
            Conflict(
                ("mesh", "lease", "witness"),
                f"the store can be a lease voter only on PostgreSQL: {why}, but the database "
                "is SQLite, a single node's file; set witness = 'off' "
                "(BRIO_MESH_LEASE_WITNESS=off), or [database] url = 'postgresql://...'",
                (("database", "url"), ("mesh", "lease", "voters")),
            )
        )
    unauthenticated = not mesh.tls.enabled and mesh.cluster_secret is None
    if mesh.enabled and multi_node and unauthenticated and not mesh.insecure:
        found.append(
            Conflict(
                ("mesh", "cluster_secret"),
                "a multi-node mesh without TLS needs a shared secret to authenticate its "
                "nodes' calls: set [mesh] cluster_secret (or BRIO_MESH_CLUSTER_SECRET; e.g. "
                "'openssl rand -hex 32', the same on every node), or enable [mesh.tls], or "
                "set [mesh] insecure = true to run unauthenticated",
                (("mesh", "enabled"), ("mesh", "tls", "enabled"), ("mesh", "insecure")),
            )
        )
    secret = mesh.cluster_secret
    tls = mesh.tls
    tls_on = (("mesh", "tls", "enabled"),)
    if tls.enabled and tls.cert_file is None:
        found.append(
            Conflict(
                ("mesh", "tls", "cert_file"), "TLS is enabled but cert_file is not set", tls_on
            )
        )
    if tls.enabled and tls.key_file is None:
        found.append(
            Conflict(("mesh", "tls", "key_file"), "TLS is enabled but key_file is not set", tls_on)
        )
    if tls.verify_client and tls.ca_file is None:
        found.append(
            Conflict(
                ("mesh", "tls", "ca_file"),
                "verify_client = true needs ca_file (the CA that signs the peers' certificates)",
                (("mesh", "tls", "verify_client"),),
            )
        )
    if tls.verify_client and not tls.enabled:
        found.append(
            Conflict(
                ("mesh", "tls", "verify_client"),
                "verify_client = true has no effect while [mesh.tls] enabled = false; "
                "enable TLS or remove verify_client",
                tls_on,
            )
        )
    if mesh.discovery.method == "dns" and not mesh.discovery.dns_name:
        found.append(
            Conflict(
                ("mesh", "discovery", "dns_name"),
                "method = 'dns' needs dns_name (the DNS name whose records list the peers)",
                (("mesh", "discovery", "method"),),
            )
        )
    if secret is not None and not secret.get_secret_value().strip():
        found.append(Conflict(("mesh", "cluster_secret"), "must not be blank"))
    token = config.server.auth_token
    if token is not None and not token.get_secret_value():
        found.append(
            Conflict(
                ("server", "auth_token"),
                "must not be empty (leave it out to run without authentication)",
            )
        )
    found.extend(_provider_conflicts(config))
    return tuple(found)


def _provider_conflicts(config: BrioConfig) -> list[Conflict]:
    found: list[Conflict] = []
    known = sorted(config.providers)
    for name, agent in config.agents.items():
        loc = ("agents", name, "provider")
        if agent.provider is not None:
            if agent.provider not in config.providers:
                known_text = ", ".join(repr(k) for k in known) if known else "none are configured"
                found.append(
                    Conflict(
                        loc,
                        f"unknown provider {agent.provider!r}: there is no "
                        f"[providers.{agent.provider}] section (known providers: {known_text})",
                    )
                )
        elif agent.kind == "llm":
            if len(known) == 1:
                agent.provider = known[0]
            elif not known:
                found.append(
                    Conflict(loc, "an llm agent needs a provider, but no [providers.NAME] is set")
                )
            else:
                found.append(
                    Conflict(
                        loc,
                        f"several providers are configured ({', '.join(known)}); "
                        "choose one with provider = '...'",
                    )
                )
    return found
