"""The files under ``deploy/`` stay usable: the example config loads and its agents resolve,
and the systemd unit runs ``brio serve`` on that config with enough time to stop cleanly."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from brio.agents.registry import build_registry
from brio.config import ConfigError, load_config
from brio.config.model import BrioConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
EXAMPLE = DEPLOY / "brio.example.toml"
UNIT = DEPLOY / "systemd" / "brio.service"

ENV = {"OPENAI_API_KEY": "sk-test-not-a-real-key"}


def load_example() -> BrioConfig:
    return load_config(EXAMPLE, ENV, search=False).config


def unit_entries() -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values...]}}``; systemd allows a key more than once."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{UNIT}: key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"{UNIT}: not key=value: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service_value(key: str) -> str:
    values = unit_entries()["Service"].get(key, [])
    assert len(values) == 1, f"[Service] {key}: expected one value, got {values}"
    return values[0]


def test_example_config_is_valid() -> None:
    config = load_example()
    assert config.database_backend == "sqlite"
    assert not config.mesh.enabled
    provider = config.providers["openai"]
    assert provider.api_key is not None
    assert provider.api_key.get_secret_value() == ENV["OPENAI_API_KEY"]


def test_example_config_needs_the_api_key() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(EXAMPLE, {}, search=False)
    assert any("OPENAI_API_KEY is not set" in line for line in caught.value.problems)


def test_example_agents_resolve() -> None:
    agents = build_registry(load_example(), eps=[])
    kinds = {name: agent.kind for name, agent in agents.items()}
    assert kinds == {
        "echo": "echo",
        "sleep": "sleep",
        "say": "echo",
        "sysinfo": "shell",
        "assistant": "llm",
    }
    assert agents["sysinfo"].settings.allowed_commands
    assert agents["assistant"].settings.provider == "openai"


def test_unit_runs_brio_serve_on_the_example_path() -> None:
    argv = shlex.split(service_value("ExecStart"))
    assert Path(argv[0]).name == "brio"
    assert argv[1:] == ["serve"]
    environment = unit_entries()["Service"]["Environment"]
    assert "BRIO_CONFIG=/etc/brio/brio.toml" in environment


def test_unit_stops_cleanly_and_restarts_on_failure() -> None:
    assert service_value("KillSignal") == "SIGTERM"
    assert service_value("Restart") == "on-failure"
    grace = load_example().server.shutdown_grace
    assert float(service_value("TimeoutStopSec")) > grace


def test_unit_runs_as_a_dedicated_user_with_data_dir_as_state_directory() -> None:
    assert service_value("User") not in ("", "root", "0")
    state = service_value("StateDirectory")
    assert load_example().data_dir == Path("/var/lib") / state
