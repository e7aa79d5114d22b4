"""``brio config check`` / ``brio config show``: exit codes, output, and no secret printed."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest

from brio.cli.config_cmd import config_check, config_show
from brio.config import load_config

GOOD = """\
[server]
auth_token = "tok-SECRET"

[mesh]
node_id = "n1"
[[mesh.peers]]
id = "w1"
address = "10.0.0.2:50051"

[agents.coder]
kind = "llm"

[providers.local]
base_url = "http://localhost:11434"
api_key = "sk-SECRET"
default_model = "llama3"

[database]
url = "postgresql://brio:pw-SECRET@db:5432/brio"
"""


@pytest.fixture(autouse=True)
def clean_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No BRIO_* variables, an empty home and working directory: only what the test sets."""
    for name in list(os.environ):
        if name.startswith("BRIO_") or name == "XDG_CONFIG_HOME":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_check_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    if Path("/etc/brio/brio.toml").exists():
        pytest.skip("this machine has /etc/brio/brio.toml")
    assert config_check(None) == 0
    assert capsys.readouterr().out == "OK: defaults\n"


def test_check_found_file_and_env(
    clean_machine: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(clean_machine / "brio.toml", GOOD)
    monkeypatch.setenv("BRIO_NODE_ID", "n2")
    assert config_check(None) == 0
    out = capsys.readouterr()
    assert out.out == f"OK: {path}\nenvironment overrides: BRIO_NODE_ID\n"
    assert out.err == ""


def test_check_explicit_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "node.toml", GOOD)
    assert config_check(str(path)) == 0
    assert capsys.readouterr().out == f"OK: {path}\n"


def test_check_reports_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "bad.toml", '[server]\nport = "x"\n[mesh]\nenabeld = true\n')
    assert config_check(str(path)) == 1
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()
    assert lines[0] == "brio: invalid configuration (2 problems):"
    assert lines[1] == f"  {path}: [server] port: got 'x'; expected a whole number"
    assert lines[2].startswith(f"  {path}: [mesh] enabeld: got true; unknown key")
    assert "Traceback" not in out.err


def test_check_builds_the_agents_as_serve_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "agents.toml", '[agents.files]\nkind = "shell"\n[agents.idle]\n')
    assert config_check(str(path)) == 1
    err = capsys.readouterr().err
    assert "[agents.files]" in err and "allowed_commands" in err
    assert "[agents.idle]: no agent to run" in err


def test_check_refuses_an_unknown_database_scheme(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "db.toml", '[database]\nurl = "mysql://u@h/db"\n')
    assert config_check(str(path)) == 1
    err = capsys.readouterr().err
    assert "[database] url" in err and "unsupported database 'mysql'" in err


def test_check_missing_explicit_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert config_check(str(tmp_path / "nope.toml")) == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"brio: invalid configuration (1 problem):\n  {tmp_path / 'nope.toml'}: no such file\n"
    )


def test_check_bad_env(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BRIO_MESH_PEERS", "node-2")
    assert config_check(None) == 1
    assert "BRIO_MESH_PEERS: peer 1 'node-2' is not host:port" in capsys.readouterr().err


def test_show_toml_is_redacted_and_reloads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "node.toml", GOOD)
    assert config_show(str(path), as_json=False) == 0
    out = capsys.readouterr().out
    assert "SECRET" not in out
    assert out.startswith(f"# source: {path}\n")
    assert 'auth_token = "***"' in out
    assert 'url = "postgresql://brio:***@db:5432/brio"' in out
    assert 'provider = "local"' in out  # the implicit choice is shown
    assert '{ id = "w1", address = "10.0.0.2:50051", role = "worker" }' in out  # the peer
    assert "#   [mesh] advertise_addr, cluster_secret\n" in out  # unset keys are named
    # what is shown is valid TOML that loads to the same configuration (secrets aside)
    shown = write(tmp_path / "shown.toml", out)
    again = load_config(shown, {}).config
    original = load_config(path, {}).config
    assert again.mesh == original.mesh
    assert again.agents == original.agents
    assert again.database.url == "postgresql://brio:***@db:5432/brio"
    assert tomllib.loads(out)["server"]["port"] == 8080


def test_show_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "node.toml", GOOD)
    assert config_show(str(path), as_json=True) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert "SECRET" not in out
    assert data["mesh"]["peers"] == [{"id": "w1", "address": "10.0.0.2:50051", "role": "worker"}]
    assert data["providers"]["local"]["api_key"] == "***"


@pytest.mark.parametrize("as_json", [False, True])
def test_show_errors(as_json: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "bad.toml", "[server\n")
    assert config_show(str(path), as_json) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert f"{path}, line 1, column 8: invalid TOML: " in out.err


def test_check_reads_the_mesh_certificates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'OK' means serve will start: a missing or mismatched certificate is caught here too."""
    from tests.certs import make_cluster_certs, tls_config

    certs = make_cluster_certs(tmp_path / "certs", {"n1": ["127.0.0.1"], "n2": []})
    good = tls_config(certs, "n1")
    section = "\n".join(f"{k} = {json.dumps(v)}" for k, v in good.items())
    path = tmp_path / "brio.toml"
    path.write_text(f"[mesh]\nenabled = true\n[mesh.tls]\n{section}\n")
    assert config_check(str(path)) == 0
    capsys.readouterr()

    wrong_key = {**good, "key_file": str(certs.node("n2").key)}
    section = "\n".join(f"{k} = {json.dumps(v)}" for k, v in wrong_key.items())
    path.write_text(f"[mesh]\nenabled = true\n[mesh.tls]\n{section}\n")
    assert config_check(str(path)) == 1
    err = capsys.readouterr().err
    assert "[mesh.tls] key_file" in err and "does not match" in err
    assert "Traceback" not in err


def test_toml_names_unset_keys_and_reloads_what_is_set() -> None:
    from brio.config.render import to_toml

    data = {
        "top": None,
        "server": {"auth_token": None, "port": 8080, "hosts": ["a", None, "b\ud800"]},
        "mesh": {"peers": [{"id": "w1", "address": None}, {"id": "w2", "role": "worker"}]},
    }
    text = to_toml(data)
    assert text.startswith(
        "# not set (TOML has no null):\n"
        "#   (top level) top\n"
        "#   [server] auth_token\n"
        "#   [[mesh.peers]] #1 address\n"
        "\n"
    )
    assert tomllib.loads(text) == {
        "server": {"port": 8080, "hosts": ["a", "b\ufffd"]},
        "mesh": {"peers": [{"id": "w1"}, {"id": "w2", "role": "worker"}]},
    }
    assert to_toml({"a": 1}) == "a = 1\n"
    assert to_toml({}) == "\n"


def test_check_says_which_settings_are_not_in_effect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "brio.toml"
    path.write_text("[metrics]\nenabled = true\n[telemetry]\nservice_name = 'x'\n")
    assert config_check(str(path)) == 0
    err = capsys.readouterr().err
    assert "warning: [metrics] is set but not in effect yet: this version has no metrics" in err
    assert "warning: [telemetry] is set but not in effect yet" in err
    path.write_text("[server]\nport = 8081\n")
    assert config_check(str(path)) == 0
    assert "not in effect" not in capsys.readouterr().err


def test_check_warns_of_an_insecure_mesh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "brio.toml"
    path.write_text(
        "[mesh]\nenabled = true\ninsecure = true\n"
        "peers = [{address = '127.0.0.1:5999', id = 'w1'}]\n"
        "[database]\nurl = 'postgresql://x@127.0.0.1/x'\n"
    )
    assert config_check(str(path)) == 0
    assert "warning: INSECURE MESH: [mesh] insecure = true" in capsys.readouterr().err
    secret = "cluster_secret = '" + "ab" * 32 + "'"
    path.write_text(path.read_text().replace("insecure = true", secret))
    assert config_check(str(path)) == 0
    assert "INSECURE" not in capsys.readouterr().err
