"""The environment: ``${VAR}`` in the file, and ``BRIO_*`` variables that win over the file."""

from __future__ import annotations

import pytest

from brio.config.env import NAMED_VARIABLES

from .conftest import Loader, ProblemsOf

FILE = """\
data_dir = "/var/lib/brio"

[server]
port = 8080

[mesh]
enabled = false
node_id = "from-file"
listen_addr = "0.0.0.0:50051"

[[mesh.peers]]
id = "file-peer"
address = "10.0.0.1:50051"

[mesh.failure_detection]
heartbeat_interval = 30
"""


def test_env_wins_over_file(load_toml: Loader) -> None:
    env = {
        "BRIO_NODE_ID": "from-env",
        "BRIO_SERVER__PORT": "9000",
        "BRIO_MESH__FAILURE_DETECTION__HEARTBEAT_INTERVAL": "1.5",
        "BRIO_DATA_DIR": "/srv/brio",
    }
    loaded = load_toml(FILE, env)
    config = loaded.config
    assert config.mesh.node_id == "from-env"
    assert config.server.port == 9000
    assert config.mesh.failure_detection.heartbeat_interval == 1.5
    assert str(config.data_dir) == "/srv/brio"
    assert config.mesh.listen_addr == "0.0.0.0:50051"  # untouched keys keep the file's value
    assert loaded.env_overrides == sorted(env)


def test_every_named_variable(load_toml: Loader) -> None:
    env = {
        "BRIO_DATA_DIR": "/d",
        "BRIO_NODE_ID": "n1",
        "BRIO_MESH_ENABLED": "true",
        "BRIO_MESH_LISTEN": "127.0.0.1:6000",
        "BRIO_MESH_PEERS": " node-2:50051, [::1]:7 ,",
        "BRIO_MESH_DISCOVERY": "kubernetes",
        "BRIO_MESH_K8S_NAMESPACE": "prod",
        "BRIO_MESH_K8S_LABEL_SELECTOR": "app=brio",
        "BRIO_DATABASE_URL": "postgresql://brio:pw@db/brio",
        "BRIO_API_TOKEN": "t0ken",
        "BRIO_MESH_CLUSTER_SECRET": "cluster-s3cret",
        "BRIO_MESH_ROLE": "worker",
        "BRIO_MESH_LEASE_VOTERS": "c1, c2,,n1",
        "BRIO_MESH_LEASE_WITNESS": "store",
    }
    assert set(env) == set(NAMED_VARIABLES)
    loaded = load_toml(FILE, env)
    config = loaded.config
    assert str(config.data_dir) == "/d"
    assert config.mesh.node_id == "n1"
    assert config.mesh.enabled is True
    assert config.mesh.listen_addr == "127.0.0.1:6000"
    assert [(p.id, p.address) for p in config.mesh.peers] == [
        (None, "node-2:50051"),
        (None, "[::1]:7"),
    ]
    assert config.mesh.discovery.method == "kubernetes"
    assert config.mesh.discovery.k8s_namespace == "prod"
    assert config.mesh.discovery.k8s_label_selector == "app=brio"
    assert config.database.url == "postgresql://brio:pw@db/brio"
    assert config.server.auth_token is not None
    assert config.server.auth_token.get_secret_value() == "t0ken"
    assert config.mesh.role == "worker"
    assert config.mesh.lease.voters == ["c1", "c2", "n1"]
    assert config.mesh.lease.witness == "store"
    assert config.mesh.lease_voters() == {"c1", "c2", "n1", "@store"}
    assert loaded.env_overrides == sorted(env)


def test_empty_peer_list_clears_the_file_peers(load_toml: Loader) -> None:
    assert load_toml(FILE, {"BRIO_MESH_PEERS": ""}).config.mesh.peers == []


@pytest.mark.parametrize(
    ("peers", "expected"),
    [
        (
            "node-2:50051,node-3",
            "BRIO_MESH_PEERS: peer 2 'node-3' is not host:port: the ':port' is missing; "
            "expected host:port, e.g. '10.0.1.2:50051'",
        ),
        (
            "node-2:50051 node-3:50051",
            "BRIO_MESH_PEERS: peer 1 'node-2:50051 node-3:50051' is not host:port: it contains "
            "whitespace; expected host:port, e.g. '10.0.1.2:50051' (separate peers with commas: "
            "'node-2:50051,node-3:50051')",
        ),
        (
            "node-2:99999",
            "BRIO_MESH_PEERS: peer 1 'node-2:99999' is not host:port: the port 99999 is out of "
            "range (1-65535)",
        ),
        (
            "node-2:port",
            "BRIO_MESH_PEERS: peer 1 'node-2:port' is not host:port: the port 'port' is not a "
            "number; expected host:port, e.g. '10.0.1.2:50051'",
        ),
    ],
)
def test_bad_peer_in_env(peers: str, expected: str, problems_of: ProblemsOf) -> None:
    assert problems_of(None, {"BRIO_MESH_PEERS": peers}) == [expected]


def test_env_errors_name_the_variable(problems_of: ProblemsOf) -> None:
    env = {
        "BRIO_SERVER__PORT": "http",
        "BRIO_MESH_ENABLED": "maybe",
        "BRIO_MESH_DISCOVERY": "consul",
        "BRIO_MESH__FAILURE_DETECTION__HEARTBEAT_INTERVAL": "fast",
    }
    assert sorted(problems_of(FILE, env)) == [
        "BRIO_MESH_DISCOVERY: [mesh.discovery] method: got 'consul'; expected one of "
        "'static', 'dns', 'kubernetes'",
        "BRIO_MESH_ENABLED: [mesh] enabled: got 'maybe'; expected true or false",
        "BRIO_MESH__FAILURE_DETECTION__HEARTBEAT_INTERVAL: [mesh.failure_detection] "
        "heartbeat_interval: got 'fast'; expected a number",
        "BRIO_SERVER__PORT: [server] port: got 'http'; expected a whole number",
    ]


def test_unknown_generic_key_names_the_variable(problems_of: ProblemsOf) -> None:
    (line,) = problems_of(None, {"BRIO_SERVER__PROT": "9000"})
    assert line.startswith(
        "BRIO_SERVER__PROT: [server] prot: got '9000'; unknown key (did you mean 'port'?)"
    )
    (line,) = problems_of(None, {"BRIO_SERVR__PORT": "9000"})
    assert line.startswith("BRIO_SERVR__PORT: [servr]: got a table; unknown section")


def test_missing_key_in_table_made_from_env(problems_of: ProblemsOf) -> None:
    (line,) = problems_of(None, {"BRIO_PROVIDERS__OPENAI__API_KEY": "sk-1"})
    assert line == (
        "BRIO_PROVIDERS__OPENAI__API_KEY: [providers.openai] base_url: "
        "this key is required but missing"
    )


def test_cross_field_problem_names_env_sources(problems_of: ProblemsOf) -> None:
    env = {"BRIO_MESH__TLS__ENABLED": "true", "BRIO_NODE_ID": "n"}
    assert problems_of(None, env) == [
        "BRIO_MESH__TLS__ENABLED: [mesh.tls] cert_file: TLS is enabled but cert_file is not set",
        "BRIO_MESH__TLS__ENABLED: [mesh.tls] key_file: TLS is enabled but key_file is not set",
    ]


def test_mesh_enabled_by_env_on_file_peers(problems_of: ProblemsOf) -> None:
    env = {"BRIO_MESH_ENABLED": "1", "BRIO_MESH_CLUSTER_SECRET": "cluster-s3cret"}
    (line,) = problems_of(FILE, env)
    assert line.endswith(
        "brio.toml, BRIO_MESH_ENABLED: [database] url: a multi-node mesh needs "
        "PostgreSQL: set [database] url = 'postgresql://...' (or BRIO_DATABASE_URL); [mesh] "
        "enabled = true with 1 peer(s) in [[mesh.peers]], but the database is SQLite"
    )


def test_json_for_lists_and_tables(load_toml: Loader) -> None:
    env = {
        "BRIO_MESH__PEERS": '[{"id": "w1", "address": "10.0.0.9:50051", "role": "worker"}]',
        "BRIO_MESH__ACCESS_CONTROL__ALLOWED_CIDRS": '["10.0.0.0/24"]',
        "BRIO_MESH__ACCESS_CONTROL__COORDINATOR_ONLY_ENDPOINTS": "/api/admin, /api/config",
        "BRIO_TELEMETRY__TAGS": '{"region": "eu"}',
        "BRIO_AGENTS__CODER__NODE_AFFINITY": '["gpu-1"]',
    }
    config = load_toml(FILE, env).config
    assert [(p.id, p.address) for p in config.mesh.peers] == [("w1", "10.0.0.9:50051")]
    assert [str(c) for c in config.mesh.access_control.allowed_cidrs] == ["10.0.0.0/24"]
    assert config.mesh.access_control.coordinator_only_endpoints == ["/api/admin", "/api/config"]
    assert config.telemetry.tags == {"region": "eu"}
    assert config.agents["coder"].node_affinity == ["gpu-1"]


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        (
            "BRIO_MESH__PEERS",
            '[{"address": ',
            "BRIO_MESH__PEERS: [mesh] peers: got '[{\"address\": '; invalid JSON: "
            "Expecting value at column 13",
        ),
        (
            "BRIO_MESH__PEERS",
            "a:1",
            "BRIO_MESH__PEERS: [mesh] peers: got 'a:1'; expected a JSON list of tables, "
            'e.g. [{"address": "10.0.1.2:50051"}]',
        ),
        (
            "BRIO_TELEMETRY__TAGS",
            "region=eu",
            "BRIO_TELEMETRY__TAGS: [telemetry] tags: got 'region=eu'; expected a JSON object, "
            'e.g. {"key": "value"}',
        ),
        (
            "BRIO_MESH__PEERS__0__ADDRESS",
            "a:1",
            "BRIO_MESH__PEERS__0__ADDRESS: [mesh] peers is a list and cannot be set item by "
            "item; set all of it as JSON in BRIO_MESH__PEERS",
        ),
        (
            "BRIO_SERVER____PORT",
            "1",
            "BRIO_SERVER____PORT: empty key between '__' separators (expected BRIO_SECTION__KEY)",
        ),
    ],
)
def test_bad_structured_env(var: str, value: str, expected: str, problems_of: ProblemsOf) -> None:
    assert problems_of(None, {var: value}) == [expected]


def test_two_variables_for_one_key_must_agree(load_toml: Loader, problems_of: ProblemsOf) -> None:
    same = {"BRIO_MESH_ENABLED": "true", "BRIO_MESH__ENABLED": "true"}
    assert load_toml(None, same).config.mesh.enabled is True
    clash = {"BRIO_MESH_ENABLED": "true", "BRIO_MESH__ENABLED": "false"}
    assert problems_of(None, clash) == [
        "BRIO_MESH__ENABLED, BRIO_MESH_ENABLED: [mesh] enabled: both variables set this key, "
        "to different values; remove one"
    ]


def test_env_into_a_key_that_is_not_a_table(problems_of: ProblemsOf) -> None:
    text = 'mesh = "x"\n'
    problems = problems_of(text, {"BRIO_NODE_ID": "n"})
    assert problems[0] == ("BRIO_NODE_ID: [mesh] node_id: cannot be set: mesh is not a table")


def test_unrelated_brio_variables_are_ignored(load_toml: Loader) -> None:
    loaded = load_toml(None, {"BRIO_CONFIG": "", "BRIO_SOMETHING_ELSE": "x", "HOME": "/h"})
    assert loaded.env_overrides == []


# --- ${VAR} expansion ---------------------------------------------------------------------


def test_references_expand_everywhere(load_toml: Loader) -> None:
    text = """\
[mesh]
node_id = "${HOSTNAME}-brio"
[[mesh.peers]]
address = "${PEER_HOST}:50051"
[telemetry.tags]
region = "${REGION}"
[agents.coder]
node_affinity = ["${GPU_NODE}", "fixed"]
"""
    env = {"HOSTNAME": "h1", "PEER_HOST": "10.0.0.2", "REGION": "eu", "GPU_NODE": "g1"}
    config = load_toml(text, env).config
    assert config.mesh.node_id == "h1-brio"
    assert config.mesh.peers[0].address == "10.0.0.2:50051"
    assert config.telemetry.tags == {"region": "eu"}
    assert config.agents["coder"].node_affinity == ["g1", "fixed"]


def test_dollar_escape_and_plain_dollars(load_toml: Loader) -> None:
    text = '[agents.a]\nsystem_prompt = "cost: $5, literal $${HOME}, $HOME stays"\n'
    prompt = load_toml(text, {"HOME": "/root"}).config.agents["a"].system_prompt
    assert prompt == "cost: $5, literal ${HOME}, $HOME stays"


def test_expanded_values_are_not_expanded_again(load_toml: Loader) -> None:
    text = '[mesh]\nnode_id = "${A}"\n'
    assert load_toml(text, {"A": "${B}"}).config.mesh.node_id == "${B}"


def test_unset_and_malformed_references(problems_of: ProblemsOf) -> None:
    text = """\
[mesh]
node_id = "${NODE}"
[[mesh.peers]]
address = "${PEER}:1"
[agents.a]
system_prompt = "${not closed"
description = "${1BAD}"
"""
    problems = [p.split("brio.toml: ", 1)[1] for p in problems_of(text, {})]
    assert problems == [
        "[mesh] node_id: environment variable NODE is not set (used as ${NODE})",
        "[[mesh.peers]] #1 address: environment variable PEER is not set (used as ${PEER})",
        "[agents.a] system_prompt: '${' without a closing '}'; write '$${' for a literal '${'",
        "[agents.a] description: '${1BAD}' is not a valid variable reference",
    ]


def test_unset_database_url_reports_only_the_variable(problems_of: ProblemsOf) -> None:
    """No "needs PostgreSQL" noise about the value that could not be expanded."""
    text = '[mesh]\nenabled = true\n[mesh.discovery]\nmethod = "kubernetes"\n'
    text += '[database]\nurl = "${DATABASE_URL}"\n'
    (line,) = problems_of(text, {})
    assert line.endswith(
        "[database] url: environment variable DATABASE_URL is not set (used as ${DATABASE_URL})"
    )


def test_empty_variable_is_allowed(load_toml: Loader) -> None:
    text = '[telemetry.tags]\nsuffix = "${SUFFIX}"\n'
    assert load_toml(text, {"SUFFIX": ""}).config.telemetry.tags == {"suffix": ""}
