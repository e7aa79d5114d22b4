"""Secrets never leave ``redacted``: tokens, API keys, passwords in URLs."""

from __future__ import annotations

import json

import pytest

from brio.config import redacted
from brio.config.redact import redact_text

from .conftest import Loader

SECRETS = """\
[server]
auth_token = "tok-SECRET"

[mesh]
enabled = true
cluster_secret = "cluster-SECRET"
[[mesh.peers]]
address = "10.0.0.2:50051"

[providers.openai]
base_url = "https://api.openai.com/v1"
api_key = "sk-SECRET"

[telemetry]
endpoint = "https://user:pw-SECRET@collector:4317"

[database]
url = "postgresql://brio:pw-SECRET@db-cluster:5432/brio?sslmode=require&sslpassword=x-SECRET"
"""


def test_redacted_hides_every_secret(load_toml: Loader) -> None:
    data = redacted(load_toml(SECRETS).config)
    text = json.dumps(data)
    assert "SECRET" not in text
    assert data["server"]["auth_token"] == "***"
    assert data["mesh"]["cluster_secret"] == "***"
    assert data["providers"]["openai"]["api_key"] == "***"
    assert data["database"]["url"] == (
        "postgresql://brio:***@db-cluster:5432/brio?sslmode=require&sslpassword=***"
    )
    assert data["telemetry"]["endpoint"] == "https://user:***@collector:4317"
    assert data["providers"]["openai"]["base_url"] == "https://api.openai.com/v1"


def test_redacted_is_the_effective_config(load_toml: Loader) -> None:
    data = redacted(load_toml('data_dir = "/srv/brio"\n').config)
    assert data["database"]["url"] == "sqlite:////srv/brio/brio.db"
    assert data["server"]["auth_token"] is None
    assert data["mesh"]["failure_detection"]["heartbeat_interval"] == 30.0
    assert json.loads(json.dumps(data)) == data


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://brio:password@host/db", "postgresql://brio:***@host/db"),
        ("postgres://:pw@host", "postgres://:***@host"),
        ("postgresql://brio:p/w@d@host/db", "postgresql://brio:***@host/db"),
        ("postgresql://brio@host/db", "postgresql://brio@host/db"),
        ("http://jaeger:4317", "http://jaeger:4317"),
        ("postgresql://host/db?password=pw&user=u", "postgresql://host/db?password=***&user=u"),
        ("not a url: a:b@c", "not a url: a:b@c"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected
