"""Which file is used: ``$BRIO_CONFIG``, ``./brio.toml``, ``~/.config/brio``, ``/etc/brio``."""

from __future__ import annotations

from pathlib import Path

import pytest

from brio.config import ConfigError, find_config_file, load_config


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    """Empty stand-ins for the working directory, the home directory and /etc."""
    found = {name: tmp_path / name for name in ("cwd", "home", "etc", "xdg")}
    for path in found.values():
        path.mkdir()
    return found


def put(path: Path, node_id: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[mesh]\nnode_id = "{node_id}"\n', encoding="utf-8")
    return path


def find(places: dict[str, Path], env: dict[str, str] | None = None) -> Path | None:
    return find_config_file(
        env or {}, places["cwd"], places["home"], places["etc"] / "brio" / "brio.toml"
    )


def test_order(places: dict[str, Path]) -> None:
    assert find(places) is None
    etc = put(places["etc"] / "brio" / "brio.toml", "etc")
    assert find(places) == etc
    user = put(places["home"] / ".config" / "brio" / "brio.toml", "user")
    assert find(places) == user
    local = put(places["cwd"] / "brio.toml", "local")
    assert find(places) == local
    explicit = put(places["cwd"] / "elsewhere.toml", "explicit")
    assert find(places, {"BRIO_CONFIG": str(explicit)}) == explicit
    assert find(places, {"BRIO_CONFIG": "elsewhere.toml"}) == explicit  # relative to cwd


def test_xdg_config_home_replaces_dot_config(places: dict[str, Path]) -> None:
    put(places["home"] / ".config" / "brio" / "brio.toml", "user")
    xdg = put(places["xdg"] / "brio" / "brio.toml", "xdg")
    assert find(places, {"XDG_CONFIG_HOME": str(places["xdg"])}) == xdg


def test_brio_config_must_exist(places: dict[str, Path]) -> None:
    put(places["cwd"] / "brio.toml", "local")
    with pytest.raises(ConfigError) as caught:
        find(places, {"BRIO_CONFIG": "/nonexistent/brio.toml"})
    assert caught.value.problems == ["BRIO_CONFIG: no such file: /nonexistent/brio.toml"]
    with pytest.raises(ConfigError, match=r"^BRIO_CONFIG: not a file: "):
        find(places, {"BRIO_CONFIG": str(places["etc"])})


def test_empty_brio_config_means_unset(places: dict[str, Path]) -> None:
    local = put(places["cwd"] / "brio.toml", "local")
    assert find(places, {"BRIO_CONFIG": ""}) == local


def test_load_config_searches_cwd_and_home(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(places["cwd"])
    user = put(places["home"] / ".config" / "brio" / "brio.toml", "user")
    loaded = load_config(env={"HOME": str(places["home"])})
    assert (loaded.source, loaded.config.mesh.node_id) == (user, "user")
    local = put(places["cwd"] / "brio.toml", "local")
    loaded = load_config(env={"HOME": str(places["home"])})
    assert (loaded.source, loaded.config.mesh.node_id) == (places["cwd"] / "brio.toml", "local")
    assert loaded.source is not None
    assert loaded.source.samefile(local)


def test_load_config_defaults_to_os_environ(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(places["cwd"])
    monkeypatch.setenv("HOME", str(places["home"]))
    monkeypatch.setenv("BRIO_NODE_ID", "from-os-environ")
    put(places["cwd"] / "brio.toml", "local")
    loaded = load_config()
    assert loaded.config.mesh.node_id == "from-os-environ"
    assert "BRIO_NODE_ID" in loaded.env_overrides


def test_no_search_means_defaults(places: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(places["cwd"])
    put(places["cwd"] / "brio.toml", "local")
    loaded = load_config(env={}, search=False)
    assert loaded.source is None
    assert loaded.config.database_backend == "sqlite"
    assert loaded.config.server.host == "127.0.0.1"


def test_explicit_path_beats_brio_config(places: dict[str, Path]) -> None:
    explicit = put(places["cwd"] / "a.toml", "a")
    other = put(places["cwd"] / "b.toml", "b")
    loaded = load_config(explicit, {"BRIO_CONFIG": str(other)})
    assert loaded.config.mesh.node_id == "a"
