"""Property tests: whatever is written in the file or the environment, loading either works
or raises ``ConfigError`` whose lines name the key at fault; nothing else escapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brio.config import ConfigError, load_config, redacted
from brio.config.env import NAMED_VARIABLES, expand_references
from brio.config.keys import model_paths, toml_key
from brio.config.model import split_host_port
from brio.config.render import to_toml

from .test_guide_examples import FRAGMENTS, NEEDS_ENV

LEAVES = model_paths()
NUMERIC = [path for path, kind in LEAVES if kind in (int, float)]
BOOLEAN = [path for path, kind in LEAVES if kind is bool]
BOOL_WORDS = {"0", "1", "true", "false", "yes", "no", "on", "off", "t", "f", "y", "n"}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


not_a_number_text = st.text(max_size=20).filter(lambda s: not _is_number(s))
not_a_bool_text = st.text(max_size=20).filter(lambda s: s.lower() not in BOOL_WORDS)
scalars = st.one_of(
    st.text(max_size=20),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
)
containers = st.one_of(
    st.lists(scalars, min_size=1, max_size=3),
    st.dictionaries(st.sampled_from(["a", "b", "port"]), scalars, min_size=1, max_size=2),
)
wrong_for_number = st.one_of(not_a_number_text, st.booleans(), containers)
wrong_for_int = st.one_of(
    wrong_for_number,
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
)
wrong_for_bool = st.one_of(
    not_a_bool_text,
    st.integers().filter(lambda i: i not in (0, 1)),
    st.floats(allow_nan=False).filter(lambda f: f not in (0.0, 1.0)),
    containers,
)


def nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data: dict[str, Any] = {path[-1]: value}
    for part in reversed(path[:-1]):
        data = {part: data}
    return data


def env_name(path: tuple[str, ...]) -> str:
    return "BRIO_" + "__".join(part.upper() for part in path)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("properties") / "brio.toml"


def load_file(scratch: Path, data: dict[str, Any]) -> list[str]:
    scratch.write_text(to_toml(data), encoding="utf-8")
    try:
        load_config(scratch, {})
    except ConfigError as err:
        return err.problems
    return []


def names(path: tuple[str, ...], line: str) -> bool:
    return f": {toml_key(path)}: " in line or f": {toml_key(path, is_table=True)}: " in line


@given(data=st.data())
@settings(max_examples=300)
def test_wrong_type_in_file_names_the_key(scratch: Path, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(NUMERIC + BOOLEAN), label="key")
    kind = dict(LEAVES)[path]
    strategy = {bool: wrong_for_bool, int: wrong_for_int, float: wrong_for_number}[kind]
    value = data.draw(strategy, label="value")
    problems = load_file(scratch, nest(path, value))
    assert any(line.startswith(f"{scratch}: ") and names(path, line) for line in problems), problems


@given(data=st.data())
@settings(max_examples=300)
def test_wrong_type_in_env_names_the_variable(data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(NUMERIC + BOOLEAN), label="key")
    text = data.draw(not_a_bool_text if dict(LEAVES)[path] is bool else not_a_number_text)
    var = env_name(path)
    with pytest.raises(ConfigError) as caught:
        load_config(None, {var: text}, search=False)
    assert any(line.startswith(f"{var}: ") for line in caught.value.problems)
    assert any(names(path, line) for line in caught.value.problems), caught.value.problems


KEYS = st.one_of(
    st.sampled_from([path for path, _ in LEAVES] + [("agents",), ("mesh", "peers", "x")]),
    st.tuples(st.sampled_from(["mesh", "agents", "server"]), st.text(min_size=1, max_size=8)),
)


@given(entries=st.lists(st.tuples(KEYS, st.one_of(scalars, containers)), max_size=6))
@settings(max_examples=300)
def test_anything_in_the_file_is_accepted_or_a_config_error(
    scratch: Path, entries: list[tuple[tuple[str, ...], Any]]
) -> None:
    data: dict[str, Any] = {}
    for path, value in entries:
        table = data
        for part in path[:-1]:
            inner = table.setdefault(part, {})
            if not isinstance(inner, dict):
                break
            table = inner
        else:
            table[path[-1]] = value
    problems = load_file(scratch, data)  # problems or none, but no other exception
    assert all("\n" not in line for line in problems)


ENV_NAMES = [env_name(path) for path, _ in LEAVES] + [
    *NAMED_VARIABLES,
    "BRIO_MESH__PEERS",
    "BRIO_TELEMETRY__TAGS",
    "BRIO_X__Y",
    "BRIO_MESH__PEERS__0",
]


@given(env=st.dictionaries(st.sampled_from(ENV_NAMES), st.text(max_size=30), max_size=6))
@settings(max_examples=300)
def test_any_environment_is_accepted_or_a_config_error(env: dict[str, str]) -> None:
    try:
        loaded = load_config(None, env, search=False)
    except ConfigError as err:
        assert err.problems
        assert all(line and "\n" not in line for line in err.problems)
    else:
        assert set(loaded.env_overrides) <= set(env)


@pytest.mark.parametrize("name", sorted(FRAGMENTS))
def test_shown_config_reloads_to_the_same(name: str, tmp_path: Path) -> None:
    source = tmp_path / "in.toml"
    source.write_text(FRAGMENTS[name], encoding="utf-8")
    env = NEEDS_ENV.get(name, {})
    first = redacted(load_config(source, env).config)
    shown = tmp_path / "shown.toml"
    shown.write_text(to_toml(first), encoding="utf-8")
    assert redacted(load_config(shown, env).config) == first


@given(text=st.text(alphabet="${}ab", max_size=20))
def test_dollar_escape_round_trips(text: str) -> None:
    escaped = text.replace("${", "$${")
    expanded, problems = expand_references(escaped, {}, "f")
    assert (expanded, problems) == (text, [])


@given(text=st.text(max_size=30))
def test_split_host_port_only_raises_value_error(text: str) -> None:
    try:
        host, port = split_host_port(text)
    except ValueError:
        return
    assert 1 <= port <= 65535
    assert host
    assert int(text.rpartition(":")[2]) == port


@given(
    host=st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?", fullmatch=True),
    port=st.integers(min_value=1, max_value=65535),
)
def test_split_host_port_round_trips(host: str, port: int) -> None:
    assert split_host_port(f"{host}:{port}") == (host, port)
