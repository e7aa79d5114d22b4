"""Each kind of mistake gets one line that names the source, the key, the value, the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from brio.config import BrioConfig, ConfigError
from brio.config.errors import problem, shorten
from brio.config.model import split_host_port

from .conftest import Loader, ProblemsOf


def only(problems: list[str]) -> str:
    assert len(problems) == 1, problems
    return problems[0]


def after_source(line: str) -> str:
    """The line without the file path in front (tmp_path differs per test)."""
    prefix = "brio.toml: "
    assert prefix in line, line
    return line.split(prefix, 1)[1]


def test_config_error_str_is_one_problem_per_line() -> None:
    err = ConfigError(["a: b", "c: d"])
    assert err.problems == ["a: b", "c: d"]
    assert str(err) == "a: b\nc: d"
    assert problem("f.toml", "[server] port", "got 'x'") == "f.toml: [server] port: got 'x'"
    assert problem("BRIO_CONFIG", None, "no such file") == "BRIO_CONFIG: no such file"
    assert shorten("x" * 100) == "x" * 57 + "..."


def test_unknown_key_suggests_and_lists(problems_of: ProblemsOf) -> None:
    line = only(problems_of("[mesh.failure_detection]\nheartbeat_intervall = 5\n"))
    assert after_source(line) == (
        "[mesh.failure_detection] heartbeat_intervall: got 5; unknown key "
        "(did you mean 'heartbeat_interval'?); known keys are: heartbeat_interval, "
        "heartbeat_timeout, suspicion_threshold, auto_remove_failed, remove_delay, degraded_latency"
    )


def test_unknown_section(problems_of: ProblemsOf) -> None:
    line = only(problems_of("[mesh.tlss]\nenabled = true\n"))
    assert after_source(line).startswith(
        "[mesh.tlss]: got a table; unknown section (did you mean 'tls'?)"
    )


def test_unknown_top_level_key(problems_of: ProblemsOf) -> None:
    line = only(problems_of('datadir = "/x"\n'))
    assert "datadir: got '/x'; unknown key (did you mean 'data_dir'?); known keys are: " in line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[mesh.failure_detection]\nheartbeat_interval = "fast"\n',
            "[mesh.failure_detection] heartbeat_interval: got 'fast'; expected a number",
        ),
        ('[server]\nport = "http"\n', "[server] port: got 'http'; expected a whole number"),
        (
            "[server]\nport = 80.5\n",
            "[server] port: got 80.5; expected a whole number, not a fraction",
        ),
        ("[server]\nport = 70000\n", "[server] port: got 70000; expected a number at most 65535"),
        ('[server]\nenabled = "maybe"\n', "[server] enabled: got 'maybe'; expected true or false"),
        (
            "[server]\nport = true\n",
            "[server] port: got true; expected a number, not true or false",
        ),
        (
            "[agents.coder]\ntimeout = 0\n",
            "[agents.coder] timeout: got 0; expected a number greater than 0",
        ),
        ("[mesh]\nnode_id = 7\n", "[mesh] node_id: got 7; expected a string (in quotes)"),
        ('[mesh]\nnode_id = ""\n', "[mesh] node_id: got ''; expected a non-empty string"),
        (
            '[mesh.peers]\naddress = "a:1"\n',
            "[mesh.peers]: got a table; expected a list of tables: write each entry "
            "under its own [[mesh.peers]]",
        ),
        ('mesh = "on"\n', "mesh: got 'on'; expected a table ([section] or { key = value })"),
        (
            '[mesh.access_control]\nallowed_cidrs = ["10.0.0.0/24", "nope"]\n',
            "[mesh.access_control] allowed_cidrs (item 2): got 'nope'; expected an IP network "
            "such as '10.0.0.0/24'",
        ),
        (
            '[providers.openai]\nbase_url = "api.openai.com"\n',
            "[providers.openai] base_url: got 'api.openai.com'; expected a URL starting with "
            "http:// or https://",
        ),
        (
            '[agents.x]\nentrypoint = "nocolon"\n',
            "[agents.x] entrypoint: got 'nocolon'; expected 'package.module:function'",
        ),
        (
            '[agents.x]\nkind = "echo"\nentrypoint = "a.b:c"\n',
            "[agents.x]: got a table; give either 'kind' or 'entrypoint', not both",
        ),
    ],
)
def test_wrong_value(text: str, expected: str, problems_of: ProblemsOf) -> None:
    assert after_source(only(problems_of(text))) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[mesh.discovery]\nmethod = "consul"\n',
            "[mesh.discovery] method: got 'consul'; expected one of 'static', 'dns', 'kubernetes'",
        ),
        (
            '[mesh]\nrole = "leader"\n',
            "[mesh] role: got 'leader'; expected one of 'coordinator', 'worker'",
        ),
        (
            '[agents.coder]\nkind = "gpt"\n',
            "[agents.coder] kind: got 'gpt'; expected one of 'echo', 'sleep', 'shell', 'llm'",
        ),
        (
            '[mesh.load_balancing]\nstrategy = "random"\n',
            "[mesh.load_balancing] strategy: got 'random'; expected one of 'round-robin', "
            "'least-connections', 'weighted', 'consistent-hash'",
        ),
    ],
)
def test_bad_enum(text: str, expected: str, problems_of: ProblemsOf) -> None:
    assert after_source(only(problems_of(text))) == expected


def test_true_is_not_an_ip_network(problems_of: ProblemsOf) -> None:
    line = only(problems_of("[mesh.access_control]\nallowed_cidrs = [true]\n"))
    assert after_source(line) == (
        "[mesh.access_control] allowed_cidrs (item 1): got true; expected an IP network such "
        "as '10.0.0.0/24', not true or false"
    )


def test_missing_key_in_second_peer(problems_of: ProblemsOf) -> None:
    text = '[[mesh.peers]]\naddress = "a:1"\n\n[[mesh.peers]]\nid = "b"\n'
    line = only(problems_of(text))
    assert after_source(line) == "[[mesh.peers]] #2 address: this key is required but missing"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.0.1.2", "the ':port' is missing"),
        (":50051", "the host before ':' is missing"),
        ("host:http", "the port 'http' is not a number"),
        ("host:0", "the port 0 is out of range (1-65535)"),
        ("::1:50051", "an IPv6 host needs brackets, e.g. '[::1]:50051'"),
        ("[zz]:1", "'zz' inside [...] is not an IPv6 address"),
        ("a b:1", "it contains whitespace"),
        ("bad/host:1", "'bad/host' is not a valid host name or IP address"),
    ],
)
def test_bad_peer_address_in_file(address: str, reason: str, problems_of: ProblemsOf) -> None:
    line = only(problems_of(f'[[mesh.peers]]\naddress = "{address}"\n'))
    assert after_source(line).startswith(f"[[mesh.peers]] #1 address: got {address!r}; {reason}")


def test_listen_addr_must_be_host_port(problems_of: ProblemsOf) -> None:
    line = only(problems_of('[mesh]\nlisten_addr = "50051"\n'))
    assert after_source(line).startswith("[mesh] listen_addr: got '50051'; the ':port' is missing")


def test_host_port_forms() -> None:
    assert split_host_port("node-2:50051") == ("node-2", 50051)
    assert split_host_port("[::1]:7") == ("::1", 7)
    assert split_host_port("127.0.0.1:0", allow_port_zero=True) == ("127.0.0.1", 0)
    with pytest.raises(ValueError, match="out of range"):
        split_host_port("127.0.0.1:0")


def test_toml_syntax_error_has_line_and_column(problems_of: ProblemsOf, tmp_path: Path) -> None:
    text = '[server]\nhost = "0.0.0.0"\nport = \n'
    line = only(problems_of(text))
    assert line == (
        f"{tmp_path / 'brio.toml'}, line 3, column 8: invalid TOML: Invalid value: 'port ='"
    )


def test_toml_duplicate_key(problems_of: ProblemsOf) -> None:
    line = only(problems_of("[server]\nport = 1\nport = 2\n"))
    assert ", line 3, column " in line
    assert "invalid TOML: Cannot overwrite a value" in line


def test_not_utf8(tmp_path: Path) -> None:
    from brio.config import load_config

    path = tmp_path / "brio.toml"
    path.write_bytes(b'[server]\nhost = "\xff"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert caught.value.problems == [f"{path}, line 2: not UTF-8 text (byte 0xff)"]


def test_explicit_path_missing_or_directory(tmp_path: Path) -> None:
    from brio.config import load_config

    with pytest.raises(ConfigError, match=r"nope\.toml: no such file$"):
        load_config(tmp_path / "nope.toml", {})
    with pytest.raises(ConfigError, match=r"is a directory, not a file$"):
        load_config(tmp_path, {})


# --- cross-field checks -------------------------------------------------------------------

MESH_WITH_PEER = (
    '[mesh]\nenabled = true\ninsecure = true\n\n[[mesh.peers]]\naddress = "10.0.1.2:50051"\n'
)


def test_mesh_with_peers_on_sqlite(problems_of: ProblemsOf) -> None:
    line = only(problems_of(MESH_WITH_PEER))
    assert after_source(line) == (
        "[database] url: a multi-node mesh needs PostgreSQL: set [database] url = "
        "'postgresql://...' (or BRIO_DATABASE_URL); [mesh] enabled = true with 1 peer(s) in "
        "[[mesh.peers]], but the database is SQLite"
    )


def test_mesh_with_discovery_on_sqlite(problems_of: ProblemsOf) -> None:
    text = '[mesh]\nenabled = true\ninsecure = true\n[mesh.discovery]\nmethod = "kubernetes"\n'
    line = only(problems_of(text))
    assert "a multi-node mesh needs PostgreSQL" in line
    assert "[mesh.discovery] method = 'kubernetes'" in line


def test_mesh_on_postgres_or_single_node_is_fine(load_toml: Loader) -> None:
    load_toml(MESH_WITH_PEER + '[database]\nurl = "postgres://brio@db/brio"\n')
    load_toml("[mesh]\nenabled = true\n")  # a mesh of one: SQLite is fine
    load_toml('[mesh]\nenabled = false\n[[mesh.peers]]\naddress = "a:1"\n')  # mesh off


def test_tls_without_certificates(problems_of: ProblemsOf) -> None:
    problems = [after_source(p) for p in problems_of("[mesh.tls]\nenabled = true\n")]
    assert problems == [
        "[mesh.tls] cert_file: TLS is enabled but cert_file is not set",
        "[mesh.tls] key_file: TLS is enabled but key_file is not set",
    ]


def test_verify_client_without_ca(problems_of: ProblemsOf) -> None:
    text = '[mesh.tls]\nenabled = true\ncert_file = "c"\nkey_file = "k"\nverify_client = true\n'
    assert after_source(only(problems_of(text))) == (
        "[mesh.tls] ca_file: verify_client = true needs ca_file "
        "(the CA that signs the peers' certificates)"
    )


def test_verify_client_without_tls(problems_of: ProblemsOf) -> None:
    text = '[mesh.tls]\nverify_client = true\nca_file = "ca"\n'
    assert after_source(only(problems_of(text))).startswith(
        "[mesh.tls] verify_client: verify_client = true has no effect while [mesh.tls] "
        "enabled = false"
    )


def test_tls_paths_are_not_checked_for_existence(load_toml: Loader) -> None:
    text = '[mesh.tls]\nenabled = true\ncert_file = "/nonexistent/c"\nkey_file = "/nonexistent/k"\n'
    assert load_toml(text).config.mesh.tls.cert_file == Path("/nonexistent/c")


def test_dns_discovery_needs_a_name(problems_of: ProblemsOf) -> None:
    line = only(problems_of('[mesh.discovery]\nmethod = "dns"\n'))
    assert after_source(line).startswith("[mesh.discovery] dns_name: method = 'dns' needs dns_name")


def test_worker_with_server_enabled_is_fine(load_toml: Loader) -> None:
    config = load_toml('[mesh]\nrole = "worker"\n[server]\nenabled = true\n').config
    assert config.server.enabled is True


def test_empty_auth_token(problems_of: ProblemsOf) -> None:
    line = only(problems_of('[server]\nauth_token = ""\n'))
    assert after_source(line).startswith("[server] auth_token: must not be empty")


PROVIDER = '[providers.{name}]\nbase_url = "https://{name}.example"\n'


def test_llm_agent_with_unknown_provider(problems_of: ProblemsOf) -> None:
    text = PROVIDER.format(name="openai") + '[agents.coder]\nkind = "llm"\nprovider = "anthropic"\n'
    assert after_source(only(problems_of(text))) == (
        "[agents.coder] provider: unknown provider 'anthropic': there is no "
        "[providers.anthropic] section (known providers: 'openai')"
    )


def test_llm_agent_takes_the_only_provider(load_toml: Loader) -> None:
    text = PROVIDER.format(name="local") + '[agents.coder]\nkind = "llm"\n'
    assert load_toml(text).config.agents["coder"].provider == "local"


def test_llm_agent_without_any_provider(problems_of: ProblemsOf) -> None:
    line = only(problems_of('[agents.coder]\nkind = "llm"\n'))
    assert after_source(line) == (
        "[agents.coder] provider: an llm agent needs a provider, but no [providers.NAME] is set"
    )


def test_llm_agent_with_several_providers_must_choose(problems_of: ProblemsOf) -> None:
    text = PROVIDER.format(name="a") + PROVIDER.format(name="b") + '[agents.c]\nkind = "llm"\n'
    assert after_source(only(problems_of(text))) == (
        "[agents.c] provider: several providers are configured (a, b); "
        "choose one with provider = '...'"
    )


def test_all_cross_field_problems_are_reported_at_once(problems_of: ProblemsOf) -> None:
    text = MESH_WITH_PEER + '[mesh.tls]\nenabled = true\n[mesh.discovery]\nmethod = "dns"\n'
    keys = [after_source(p).split(":")[0] for p in problems_of(text)]
    assert keys == [
        "[database] url",
        "[mesh.tls] cert_file",
        "[mesh.tls] key_file",
        "[mesh.discovery] dns_name",
    ]


def test_cross_field_check_also_guards_direct_construction() -> None:
    """Code that builds ``BrioConfig`` itself gets the same protection (a pydantic error)."""
    with pytest.raises(ValueError, match="multi-node mesh needs PostgreSQL"):
        BrioConfig.model_validate({"mesh": {"enabled": True, "peers": [{"address": "a:1"}]}})


def test_several_file_problems_at_once(problems_of: ProblemsOf) -> None:
    text = '[server]\nport = "x"\nhost = 1\n[logging]\nlevel = "loud"\n'
    keys = [after_source(p).split(":")[0] for p in problems_of(text)]
    assert keys == ["[server] host", "[server] port", "[logging] level"]


def test_secrets_are_not_echoed_in_errors(problems_of: ProblemsOf) -> None:
    text = '[server]\nauth_token = 12\n[database]\nurl = "postgresql://u:hunter2@h/db"\nx = 1\n'
    problems = [after_source(p) for p in problems_of(text)]
    assert "[server] auth_token: got '***'; expected a string (in quotes)" in problems
    assert "[database] x: got 1; unknown key; known keys are: url, max_connections" in problems
    assert not any("hunter2" in p for p in problems)


def test_secrets_in_an_unknown_section_are_not_echoed(problems_of: ProblemsOf) -> None:
    line = only(problems_of('[servr]\nauth_token = "tok-SECRET"\n'))
    assert after_source(line).startswith("[servr]: got a table; unknown section")
    assert "SECRET" not in line
