"""Finds the agents a node runs: built-ins, the ``brio.agents`` entry points, ``[agents.NAME]``.

Resolution of one ``[agents.NAME]`` section, first match wins:
1. ``entrypoint = "module:attr"``: that async callable;
2. ``kind = "echo" | "sleep" | "shell" | "llm"``: the built-in factory;
3. an entry point (or built-in) with the same name: it, with this section's settings;
4. ``model`` or ``provider`` set: an ``llm`` agent.
Anything else is a configuration error naming the section.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from brio.agents import builtin
from brio.agents.base import Agent
from brio.config.errors import ConfigError
from brio.config.model import AgentConfig, BrioConfig

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "brio.agents"

Factory = Callable[[str, AgentConfig, BrioConfig], Agent]


@dataclass(frozen=True, slots=True)
class RegisteredAgent:
    name: str
    kind: str  # echo, sleep, shell, llm, plugin, entrypoint
    description: str
    run: Agent
    settings: AgentConfig


def _shell(name: str, settings: AgentConfig, config: BrioConfig) -> Agent:
    from brio.agents.shell import make_shell_agent  # imported only by a node that has one

    return make_shell_agent(name, settings, config)


def _llm(name: str, settings: AgentConfig, config: BrioConfig) -> Agent:
    from brio.agents.llm import make_llm_agent  # httpx, stamina: only with an llm agent

    return make_llm_agent(name, settings, config)


def _builtin_factories() -> dict[str, Factory]:
    return {
        "echo": lambda _n, _s, _c: builtin.echo,
        "sleep": lambda _n, _s, _c: builtin.sleep,
        "shell": _shell,
        "llm": _llm,
    }


def _describe(fn: object, settings: AgentConfig) -> str:
    if settings.description:
        return settings.description
    doc = inspect.getdoc(fn) or ""
    return doc.splitlines()[0] if doc else ""


def _load_entrypoint(spec: str, where: str) -> Agent:
    module_name, _, attr = spec.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError([f"{where}: cannot load entrypoint {spec!r}: {exc}"]) from None
    if not callable(obj):
        raise ConfigError([f"{where}: entrypoint {spec!r} is not callable"])
    return obj


def _plugins(eps: Iterable[EntryPoint]) -> dict[str, Agent]:
    found: dict[str, Agent] = {"echo": builtin.echo, "sleep": builtin.sleep}
    for ep in eps:
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not stop the node
            log.error("agent plugin %r (%s) failed to load: %s", ep.name, ep.value, exc)
            continue
        if callable(obj):
            found[ep.name] = obj
        else:
            log.error("agent plugin %r (%s) is not callable; ignored", ep.name, ep.value)
    return found


def build_registry(
    config: BrioConfig, eps: Iterable[EntryPoint] | None = None
) -> dict[str, RegisteredAgent]:
    """All agents this node can run, by name. Raises ConfigError naming every bad section."""
    plugins = _plugins(entry_points(group=ENTRY_POINT_GROUP) if eps is None else eps)
    factories = _builtin_factories()
    agents: dict[str, RegisteredAgent] = {
        name: RegisteredAgent(
            name,
            name if name in factories else "plugin",
            _describe(fn, AgentConfig()),
            fn,
            AgentConfig(),
        )
        for name, fn in plugins.items()
    }
    problems: list[str] = []
    for name, settings in config.agents.items():
        where = f"[agents.{name}]"
        try:
            if settings.entrypoint:
                fn, kind = _load_entrypoint(settings.entrypoint, where), "entrypoint"
            elif settings.kind:
                fn, kind = factories[settings.kind](name, settings, config), settings.kind
            elif name in plugins:
                fn, kind = plugins[name], agents[name].kind
            elif settings.model or settings.provider:
                fn, kind = factories["llm"](name, settings, config), "llm"
            else:
                problems.append(
                    f'{where}: no agent to run; set kind = "echo" | "sleep" | "shell" | '
                    f'"llm", or entrypoint = "module:attr", or install a plugin named {name!r}'
                )
                continue
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        agents[name] = RegisteredAgent(name, kind, _describe(fn, settings), fn, settings)
    if problems:
        raise ConfigError(problems)
    return agents
