"""Every TOML fragment and environment example of the deployment guide loads as documented.

The fragments are copied verbatim from the guide, kept in the repository as
``docs/guide/distributed-mesh-guide.md``; if the guide changes,
``test_every_guide_fragment_is_covered`` notices, on every machine.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from brio.config import ConfigError, load_config

from .conftest import Loader, ProblemsOf

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide" / "distributed-mesh-guide.md"

COORDINATOR = """\
[server]
host = "0.0.0.0"
port = 8080
websocket_enabled = true

[mesh]
enabled = true
node_id = "coordinator-1"
listen_addr = "0.0.0.0:50051"
role = "coordinator"

# Peer discovery
[mesh.discovery]
method = "static"
refresh_interval = 60

# List of known peers
[[mesh.peers]]
id = "coordinator-2"
address = "10.0.1.2:50051"
role = "coordinator"

[[mesh.peers]]
id = "worker-1"
address = "10.0.1.10:50051"
role = "worker"

[[mesh.peers]]
id = "worker-2"
address = "10.0.1.11:50051"
role = "worker"

# TLS Configuration
[mesh.tls]
enabled = true
cert_file = "/etc/brio/certs/server.crt"
key_file = "/etc/brio/certs/server.key"
ca_file = "/etc/brio/certs/ca.crt"
verify_client = true  # Enable mTLS

[database]
url = "postgresql://brio:password@db-cluster:5432/brio"
max_connections = 50
"""

WORKER = """\
[server]
enabled = false  # Workers don't accept client connections

[mesh]
enabled = true
node_id = "worker-1"
listen_addr = "0.0.0.0:50051"
role = "worker"
max_agents = 50  # Limit concurrent agents

[mesh.discovery]
method = "static"

[[mesh.peers]]
id = "coordinator-1"
address = "10.0.1.1:50051"
role = "coordinator"

[[mesh.peers]]
id = "coordinator-2"
address = "10.0.1.2:50051"
role = "coordinator"

[mesh.tls]
enabled = true
cert_file = "/etc/brio/certs/worker-1.crt"
key_file = "/etc/brio/certs/worker-1.key"
ca_file = "/etc/brio/certs/ca.crt"

[database]
url = "postgresql://brio:password@db-cluster:5432/brio"
"""

AWS_COORDINATOR = """\
# coordinator.toml
[mesh]
node_id = "coordinator-1"
listen_addr = "0.0.0.0:50051"

[mesh.discovery]
method = "dns"
dns_name = "brio-mesh.internal"
hosted_zone = "Z123456789"
refresh_interval = 30

[database]
url = "postgresql://brio:${DB_PASSWORD}@brio-db.cluster-xxx.us-east-1.rds.amazonaws.com:5432/brio"
"""

AGENT_DISTRIBUTION = """\
# Deploy coder agent to GPU workers
[agents.coder]
node_affinity = ["worker-gpu-1", "worker-gpu-2"]
model = "gpt-4"

# Deploy file operations to I/O optimized nodes
[agents.file-ops]
node_affinity = ["worker-storage-1"]
"""

TASK_AFFINITY = """\
[mesh]
# Enable session affinity
session_affinity = true
affinity_ttl = 3600  # seconds
"""

LOAD_BALANCING = """\
[mesh.load_balancing]
strategy = "least-connections"  # round-robin, least-connections, weighted

# Weighted distribution
[[mesh.load_balancing.weights]]
node_id = "worker-1"
weight = 2

[[mesh.load_balancing.weights]]
node_id = "worker-2"
weight = 1
"""

MTLS = """\
[mesh.tls]
enabled = true
cert_file = "/etc/brio/certs/node.crt"
key_file = "/etc/brio/certs/node.key"
ca_file = "/etc/brio/certs/ca.crt"
verify_client = true  # Require client certificates (mTLS)
"""

ACCESS_CONTROL = """\
[mesh.access_control]
# Workers can only receive tasks
coordinator_only_endpoints = ["/api/admin", "/api/config"]

# IP allowlist for mesh connections
allowed_cidrs = ["10.0.0.0/24", "10.0.1.0/24"]
"""

TELEMETRY = """\
[telemetry]
enabled = true
exporter = "otlp"
endpoint = "http://jaeger:4317"
service_name = "brio-mesh"
propagation = "trace-context"  # W3C standard

[telemetry.tags]
node_id = "coordinator-1"
region = "us-east-1"
"""

METRICS = """\
[metrics]
enabled = true
endpoint = "0.0.0.0:9090"
path = "/metrics"

# Mesh-specific metrics
[metrics.mesh]
collect_peer_latency = true
collect_routing_stats = true
"""

FAILURE_DETECTION = """\
[mesh.failure_detection]
heartbeat_interval = 30        # seconds
heartbeat_timeout = 10         # seconds
suspicion_threshold = 3        # missed heartbeats before marking failed
auto_remove_failed = true      # Remove failed nodes from pool
remove_delay = 300            # seconds before removal
"""

ADDING_NODES = """\
   # /etc/brio/brio.toml
   [mesh]
   node_id = "worker-4"
   listen_addr = "0.0.0.0:50051"
   
   [[mesh.peers]]
   id = "coordinator-1"
   address = "10.0.1.1:50051"
   """  # noqa: W293 (verbatim from the guide, blank line included)

TWO_NODE_COORDINATOR = """\
[server]
host = "0.0.0.0"
port = 8080
websocket_enabled = true

[mesh]
enabled = true
node_id = "coordinator-1"
listen_addr = "0.0.0.0:50051"
role = "coordinator"

[[mesh.peers]]
id = "worker-1"
address = "192.168.1.11:50051"
role = "worker"

[database]
url = "postgresql://brio:password@192.168.1.10:5432/brio"
max_connections = 20

[logging]
level = "info"
format = "json"
"""

TWO_NODE_WORKER = """\
[server]
enabled = false

[mesh]
enabled = true
node_id = "worker-1"
listen_addr = "0.0.0.0:50051"
role = "worker"
max_agents = 20

[[mesh.peers]]
id = "coordinator-1"
address = "192.168.1.10:50051"
role = "coordinator"

[database]
url = "postgresql://brio:password@192.168.1.10:5432/brio"
max_connections = 10

[logging]
level = "info"
format = "json"
"""

FRAGMENTS = {
    "coordinator": COORDINATOR,
    "worker": WORKER,
    "aws_coordinator": AWS_COORDINATOR,
    "agent_distribution": AGENT_DISTRIBUTION,
    "task_affinity": TASK_AFFINITY,
    "load_balancing": LOAD_BALANCING,
    "mtls": MTLS,
    "access_control": ACCESS_CONTROL,
    "telemetry": TELEMETRY,
    "metrics": METRICS,
    "failure_detection": FAILURE_DETECTION,
    "adding_nodes": ADDING_NODES,
    "two_node_coordinator": TWO_NODE_COORDINATOR,
    "two_node_worker": TWO_NODE_WORKER,
}

# The environment blocks of the guide: the bash "Environment Variables" block, the Docker
# Compose services and the Kubernetes StatefulSet (fieldRef values filled in as a pod would).
BASH_ENV = {
    "BRIO_NODE_ID": "node-1",
    "BRIO_MESH_ENABLED": "true",
    "BRIO_MESH_LISTEN": "0.0.0.0:50051",
    "BRIO_MESH_DISCOVERY": "static",
    "BRIO_MESH_PEERS": "node-2:50051,node-3:50051",
}
COMPOSE_COORDINATOR_ENV = {
    "BRIO_NODE_ID": "coordinator-1",
    "BRIO_MESH_ENABLED": "true",
    "BRIO_MESH_LISTEN": "0.0.0.0:50051",
    "BRIO_DATABASE_URL": "postgresql://brio:password@postgres:5432/brio",
}
COMPOSE_WORKER_ENV = {
    "BRIO_NODE_ID": "worker-1",
    "BRIO_MESH_ENABLED": "true",
    "BRIO_MESH_LISTEN": "0.0.0.0:50051",
    "BRIO_MESH_PEERS": "coordinator-1:50051",
    "BRIO_DATABASE_URL": "postgresql://brio:password@postgres:5432/brio",
}
KUBERNETES_ENV = {
    "BRIO_NODE_ID": "brio-coordinator-0",
    "BRIO_MESH_DISCOVERY": "kubernetes",
    "BRIO_MESH_K8S_NAMESPACE": "default",
    "BRIO_MESH_K8S_LABEL_SELECTOR": "app=brio-kernel",
}

#: A multi-node mesh without TLS needs a cluster secret (or ``insecure = true``); the guide's
#: plaintext examples get it from the environment.
SECRET_ENV = {"BRIO_MESH_CLUSTER_SECRET": "guide-cluster-secret-0123456789"}
NEEDS_ENV = {
    "aws_coordinator": {"DB_PASSWORD": "s3cret"},
    "two_node_coordinator": SECRET_ENV,
    "two_node_worker": SECRET_ENV,
}


@pytest.mark.parametrize("name", sorted(FRAGMENTS))
def test_guide_fragment_loads(name: str, load_toml: Loader) -> None:
    env = NEEDS_ENV.get(name, {})
    loaded = load_toml(FRAGMENTS[name], env)
    assert loaded.source is not None
    assert loaded.env_overrides == sorted(var for var in env if var.startswith("BRIO_"))


def test_every_guide_fragment_is_covered() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.DOTALL)
    assert sorted(blocks) == sorted(FRAGMENTS.values())


def test_coordinator_values(load_toml: Loader) -> None:
    config = load_toml(COORDINATOR).config
    assert config.server.host == "0.0.0.0"
    assert config.mesh.enabled is True
    assert config.mesh.node_id == "coordinator-1"
    assert [(p.id, p.address, p.role) for p in config.mesh.peers] == [
        ("coordinator-2", "10.0.1.2:50051", "coordinator"),
        ("worker-1", "10.0.1.10:50051", "worker"),
        ("worker-2", "10.0.1.11:50051", "worker"),
    ]
    assert config.mesh.discovery.refresh_interval == 60.0
    assert config.mesh.tls.verify_client is True
    assert config.mesh.tls.cert_file == Path("/etc/brio/certs/server.crt")
    assert config.database_backend == "postgresql"
    assert config.database.max_connections == 50


def test_worker_values(load_toml: Loader) -> None:
    config = load_toml(WORKER).config
    assert config.server.enabled is False
    assert config.mesh.role == "worker"
    assert config.mesh.max_agents == 50
    assert config.mesh.tls.enabled is True
    assert config.mesh.tls.verify_client is False


def test_aws_fragment_expands_db_password(load_toml: Loader) -> None:
    config = load_toml(AWS_COORDINATOR, {"DB_PASSWORD": "s3cret"}).config
    assert config.database.url == (
        "postgresql://brio:s3cret@brio-db.cluster-xxx.us-east-1.rds.amazonaws.com:5432/brio"
    )
    assert config.mesh.discovery.method == "dns"
    assert config.mesh.discovery.dns_name == "brio-mesh.internal"
    assert config.mesh.discovery.hosted_zone == "Z123456789"


def test_aws_fragment_without_db_password_names_it(problems_of: ProblemsOf) -> None:
    problems = problems_of(AWS_COORDINATOR, {})
    assert len(problems) == 1
    assert problems[0].endswith(
        "brio.toml: [database] url: environment variable DB_PASSWORD is not set "
        "(used as ${DB_PASSWORD})"
    )


def test_small_fragments_values(load_toml: Loader) -> None:
    agents = load_toml(AGENT_DISTRIBUTION).config.agents
    assert agents["coder"].node_affinity == ["worker-gpu-1", "worker-gpu-2"]
    assert agents["coder"].model == "gpt-4"
    assert agents["file-ops"].node_affinity == ["worker-storage-1"]
    mesh = load_toml(TASK_AFFINITY).config.mesh
    assert mesh.session_affinity is True
    assert mesh.affinity_ttl == 3600.0
    balancing = load_toml(LOAD_BALANCING).config.mesh.load_balancing
    assert balancing.strategy == "least-connections"
    assert [(w.node_id, w.weight) for w in balancing.weights] == [("worker-1", 2), ("worker-2", 1)]
    access = load_toml(ACCESS_CONTROL).config.mesh.access_control
    assert [str(c) for c in access.allowed_cidrs] == ["10.0.0.0/24", "10.0.1.0/24"]
    telemetry = load_toml(TELEMETRY).config.telemetry
    assert telemetry.tags == {"node_id": "coordinator-1", "region": "us-east-1"}
    metrics = load_toml(METRICS).config.metrics
    assert metrics.mesh.collect_peer_latency is True
    failure = load_toml(FAILURE_DETECTION).config.mesh.failure_detection
    assert (failure.heartbeat_interval, failure.suspicion_threshold) == (30.0, 3)
    assert failure.remove_delay == 300.0
    added = load_toml(ADDING_NODES).config.mesh
    assert added.node_id == "worker-4"
    assert added.peers[0].address == "10.0.1.1:50051"


def test_two_node_setup(load_toml: Loader) -> None:
    coordinator = load_toml(TWO_NODE_COORDINATOR, SECRET_ENV).config
    worker = load_toml(TWO_NODE_WORKER, SECRET_ENV).config
    assert coordinator.logging.format == "json"
    assert worker.mesh.max_agents == 20
    assert coordinator.database_url == worker.database_url


def test_bash_env_block_needs_postgres(problems_of: ProblemsOf) -> None:
    """The guide's env block alone is a two-peer mesh on the default SQLite: refused."""
    (line,) = problems_of(None, {**BASH_ENV, **SECRET_ENV})
    assert line.startswith("BRIO_MESH_ENABLED, BRIO_MESH_PEERS: [database] url: ")
    assert "a multi-node mesh needs PostgreSQL: set [database] url = 'postgresql://...'" in line


def test_bash_env_block_with_database(load_toml: Loader) -> None:
    env = {**BASH_ENV, "BRIO_DATABASE_URL": "postgresql://brio@db/brio", **SECRET_ENV}
    loaded = load_toml(None, env)
    assert loaded.source is None
    assert loaded.config.mesh.node_id == "node-1"
    assert [p.address for p in loaded.config.mesh.peers] == ["node-2:50051", "node-3:50051"]
    assert all(p.id is None for p in loaded.config.mesh.peers)
    assert loaded.env_overrides == sorted(env)


@pytest.mark.parametrize("env", [COMPOSE_COORDINATOR_ENV, COMPOSE_WORKER_ENV, KUBERNETES_ENV])
def test_container_env_examples(env: dict[str, str], load_toml: Loader) -> None:
    config = load_toml(None, {**env, **SECRET_ENV}).config
    assert config.mesh.node_id == env["BRIO_NODE_ID"]


def test_kubernetes_env_values(load_toml: Loader) -> None:
    discovery = load_toml(None, KUBERNETES_ENV).config.mesh.discovery
    assert discovery.method == "kubernetes"
    assert discovery.k8s_namespace == "default"
    assert discovery.k8s_label_selector == "app=brio-kernel"


def test_brio_config_points_at_two_node_file(tmp_path: Path) -> None:
    """``export BRIO_CONFIG=/etc/brio/coordinator.toml`` as in the guide's start command."""
    path = tmp_path / "coordinator.toml"
    path.write_text(TWO_NODE_COORDINATOR, encoding="utf-8")
    env = {"BRIO_CONFIG": str(path), "HOME": str(tmp_path), **SECRET_ENV}
    loaded = load_config(env=env)
    assert loaded.source == path
    assert loaded.config.mesh.node_id == "coordinator-1"


def test_bad_brio_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^BRIO_CONFIG: no such file: .*missing\.toml$"):
        load_config(env={"BRIO_CONFIG": str(tmp_path / "missing.toml")})
