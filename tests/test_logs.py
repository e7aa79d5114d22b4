"""``[logging]``: the JSON format is one parseable object per line."""

import json
import logging

import pytest

from brio.config.model import LoggingConfig
from brio.logs import setup_logging


def test_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(LoggingConfig(level="info", format="json"))
    try:
        logging.getLogger("brio.test").info("hello %s", "there")
        logging.getLogger("brio.test").debug("hidden at info")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("brio.test").exception("failed")
    finally:
        logging.getLogger().handlers.clear()
    lines = capsys.readouterr().err.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["message"] for r in records] == ["hello there", "failed"]
    assert records[0]["level"] == "info" and records[0]["logger"] == "brio.test"
    assert "ValueError: boom" in records[1]["exception"]
