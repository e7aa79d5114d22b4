"""Typed configuration: one pydantic model per TOML section of the deployment guide.

Unknown keys are refused everywhere (``extra="forbid"``) so that a typo fails at start instead
of being silently ignored. Cross-field checks that need the whole file (a multi-node mesh on
SQLite, TLS without certificates) live in ``BrioConfig``'s validator; their messages name the
key at fault.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

Seconds = Annotated[float, Field(gt=0)]


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


class PeerConfig(Section):
    id: str | None = None  # learned from the first heartbeat when not given
    address: str
    role: Literal["coordinator", "worker"] = "worker"


class DiscoveryConfig(Section):
    method: Literal["static", "dns", "kubernetes"] = "static"
    refresh_interval: Seconds = 60.0
    dns_name: str | None = None
    hosted_zone: str | None = None
    k8s_namespace: str | None = None
    k8s_label_selector: str | None = None
    port: int = Field(default=50051, ge=1, le=65535)


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


class AccessControlConfig(Section):
    coordinator_only_endpoints: list[str] = Field(default_factory=list)
    allowed_cidrs: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=list
    )


class MeshConfig(Section):
    enabled: bool = False
    node_id: str = Field(default_factory=_default_node_id, min_length=1)
    listen_addr: str = "0.0.0.0:50051"
    role: Literal["coordinator", "worker"] = "coordinator"
    max_agents: int = Field(default=32, ge=1)
    session_affinity: bool = False
    affinity_ttl: Seconds = 3600.0
    peers: list[PeerConfig] = Field(default_factory=list)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    tls: TLSConfig = Field(default_factory=TLSConfig)
    load_balancing: LoadBalancingConfig = Field(default_factory=LoadBalancingConfig)
    failure_detection: FailureDetectionConfig = Field(default_factory=FailureDetectionConfig)
    access_control: AccessControlConfig = Field(default_factory=AccessControlConfig)


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


class DatabaseConfig(Section):
    url: str | None = None  # default: sqlite under data_dir
    max_connections: int = Field(default=10, ge=1)


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

    @property
    def database_url(self) -> str:
        """The effective database URL (SQLite under ``data_dir`` unless one is given)."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{self.data_dir / 'brio.db'}"

    @property
    def database_backend(self) -> Literal["sqlite", "postgresql"]:
        url = self.database_url
        return "postgresql" if url.startswith(("postgresql://", "postgres://")) else "sqlite"
