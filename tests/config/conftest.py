"""Helpers for the configuration tests: load TOML text in isolation from the real machine."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from brio.config import ConfigError, LoadedConfig, load_config

Loader = Callable[..., LoadedConfig]
ProblemsOf = Callable[..., list[str]]


@pytest.fixture
def load_toml(tmp_path: Path) -> Loader:
    """``load_toml(text, env)``: write ``text`` to ``brio.toml`` and load it with only ``env``."""

    def load(text: str | None, env: Mapping[str, str] | None = None) -> LoadedConfig:
        path = None
        if text is not None:
            path = tmp_path / "brio.toml"
            path.write_text(text, encoding="utf-8")
        return load_config(path, dict(env or {}), search=False)

    return load


@pytest.fixture
def problems_of(load_toml: Loader) -> ProblemsOf:
    """``problems_of(text, env)``: the problem lines of the ``ConfigError`` it must raise."""

    def problems(text: str | None, env: Mapping[str, str] | None = None) -> list[str]:
        with pytest.raises(ConfigError) as caught:
            load_toml(text, env)
        assert caught.value.problems, "a ConfigError must carry at least one problem"
        assert str(caught.value) == "\n".join(caught.value.problems)
        return caught.value.problems

    return problems
