"""Schemathesis against a live node, with every check it has.

Why: the OpenAPI document is generated from the routes and their models, so a fuzzer that
reads only that document and talks only to the real socket is the honest judge of whether the
document and the API agree (statuses, bodies, limits, ``Allow`` on 405, auth) and of whether odd
input can still reach a 5xx. Any finding fails the test; the CLI's report is the message.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from tests.nodes import node_config, running_node

TOKEN = "fuzz-token"
# About a minute on a shared two-core machine: enough for every phase to reach every operation.
MAX_TIME_S = 50
MAX_EXAMPLES = 40
# Schema-valid data may still be refused as too large: [server] max_body_bytes bounds the whole
# body, which no JSON schema can say (a batch of 1000 valid tasks of valid inputs can pass 1 MiB;
# the fuzzer sent 6 MB and took the documented 413 for a refusal of valid data). So 413 is a
# right answer to valid data, beside schemathesis's own defaults for that check. And an HTTP
# client cannot open a WebSocket, so the right answer to its valid GET /ws is the documented
# 426 (or 401), not a 2xx: say so for that one check of that one operation.
SCHEMATHESIS_CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "5xx"]

[[operations]]
include-path = "/ws"
checks.positive_data_acceptance.expected-statuses = ["401", "426"]
"""


async def test_schemathesis_with_all_checks_finds_nothing(tmp_path: Path) -> None:
    config = node_config(tmp_path, server={"auth_token": TOKEN})
    async with running_node(config, token=TOKEN) as node:
        settings = tmp_path / "schemathesis.toml"
        settings.write_text(SCHEMATHESIS_CONFIG)
        command = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(settings),
            "run",
            f"{node.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--max-time",
            str(MAX_TIME_S),
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--seed",
            "1",
            "--generation-database",
            "none",
            "--no-color",
            "--request-timeout",
            "10",
            "--workers",
            "1",
        ]
        with trio.fail_after(MAX_TIME_S + 60):
            done = await trio.run_process(
                command, capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path
            )
    report = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode == 0, report
