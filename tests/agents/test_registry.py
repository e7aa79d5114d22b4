"""How a node finds its agents: built-ins, entry points, and ``[agents.NAME]`` sections."""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pytest

from brio.agents import builtin
from brio.agents.registry import ENTRY_POINT_GROUP, build_registry
from brio.config import BrioConfig, ConfigError


def ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


def config(**agents: dict[str, Any]) -> BrioConfig:
    return BrioConfig.model_validate(
        {
            "agents": agents,
            "providers": {"only": {"base_url": "http://127.0.0.1:9/v1", "default_model": "m"}},
        }
    )


def test_installed_package_declares_the_builtins_as_entry_points() -> None:
    names = {e.name for e in entry_points(group=ENTRY_POINT_GROUP)}
    assert {"echo", "sleep"} <= names


def test_builtins_are_there_even_without_entry_points() -> None:
    agents = build_registry(config(), eps=[])
    assert agents["echo"].run is builtin.echo
    assert agents["sleep"].kind == "sleep"
    assert agents["echo"].description.startswith("Return the prompt")


def test_plugins_come_from_the_entry_point_group() -> None:
    agents = build_registry(config(), eps=[ep("shout", "tests.agents.plugin_agents:shout")])
    assert agents["shout"].kind == "plugin"
    assert agents["shout"].description == "Answer in capitals."


def test_a_section_without_kind_configures_the_plugin_of_that_name() -> None:
    agents = build_registry(
        config(shout={"timeout": 5, "description": "loud"}),
        eps=[ep("shout", "tests.agents.plugin_agents:shout")],
    )
    assert agents["shout"].settings.timeout == 5
    assert agents["shout"].description == "loud"


def test_broken_plugins_are_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        agents = build_registry(
            config(),
            eps=[
                ep("missing", "tests.agents.no_such_module:x"),
                ep("number", "tests.agents.plugin_agents:NOT_CALLABLE"),
            ],
        )
    assert "missing" not in agents and "number" not in agents
    assert "'missing'" in caplog.text and "'number'" in caplog.text


def test_kinds_and_entrypoints_from_config() -> None:
    agents = build_registry(
        config(
            copy={"kind": "echo"},
            files={"kind": "shell", "allowed_commands": ["ls"]},
            chat={"kind": "llm"},
            guess={"model": "gpt-x"},
            custom={"entrypoint": "tests.agents.plugin_agents:shout"},
        ),
        eps=[],
    )
    assert agents["copy"].run is builtin.echo
    assert agents["files"].kind == "shell"
    assert agents["chat"].kind == "llm"
    assert agents["guess"].kind == "llm"
    assert agents["custom"].kind == "entrypoint"


def test_every_bad_section_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        build_registry(
            config(
                nothing={"timeout": 3},
                files={"kind": "shell"},
                gone={"entrypoint": "tests.agents.no_such_module:run"},
                number={"entrypoint": "tests.agents.plugin_agents:NOT_CALLABLE"},
            ),
            eps=[],
        )
    text = str(info.value)
    assert len(info.value.problems) == 4
    assert "[agents.nothing]: no agent to run" in text
    assert "allowed_commands" in text
    assert "[agents.gone]: cannot load entrypoint" in text
    assert "[agents.number]: entrypoint" in text and "not callable" in text
