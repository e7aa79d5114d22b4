"""A seed that never gets to its end is reported, not run forever: each seed has an event
budget (``--max-events``), and a seed that uses it up is an ``event-budget`` violation with the
command that replays it. And the progress of a multi-seed run, drawn by rich on a terminal and
written as plain lines when not."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from brio.core.lease import Action, Lease
from sim.config import SimConfig
from sim.progress import Progress
from sim.world import run_seed

ROOT = Path(__file__).resolve().parents[2]


def sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sim", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_default_budget_is_far_above_a_normal_seed() -> None:
    config = SimConfig()
    result = run_seed(config, 0)
    assert result.violation is None
    # about 15,800 events with tasks at the 1.2 s lease (12,300 at the 3 s one, 13,000 at the
    # 5 s one: renewals and faults come with the lease): the budget is 38 times that
    assert config.event_budget >= 35 * result.events
    assert SimConfig(nodes=7, duration=600.0).event_budget == 7 * 600 * 1000
    assert SimConfig(max_events=10).event_budget == 10


def test_a_livelock_is_reported_with_its_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's case: without check-quorum, a primary whose lease ran out stays primary,
    its next deadline is that lease's end, in the past, and its timer fires again and again
    at the same instant."""
    config = SimConfig(duration=60.0, max_events=30_000)
    assert run_seed(config, 0).violation is None  # with check-quorum, well within the budget
    original = Lease._step_down

    def no_check_quorum(self: Lease, reason: str) -> list[Action]:
        if reason.startswith("lease expired"):
            return []
        return original(self, reason)

    monkeypatch.setattr(Lease, "_step_down", no_check_quorum)
    result = run_seed(config, 0)
    assert result.violation is not None
    assert result.violation.invariant == "event-budget"
    assert result.events == 30_000
    assert result.simulated < config.duration
    assert "30000 events" in result.violation.detail
    assert result.trace  # the events that led there


def test_a_used_up_budget_prints_a_replay_that_reproduces_it() -> None:
    done = sim("--seeds", "2", "--max-events", "700", "--json", "--jobs", "1")
    assert done.returncode == 1
    summary = json.loads(done.stdout)
    assert summary["config"]["max_events"] == 700
    [first, _] = summary["violations"]
    assert first["invariant"] == "event-budget"
    command = shlex.split(first["replay"])
    assert command[3:] == ["--seed", "0", "--max-events", "700"]
    replay = sim(*command[3:])
    assert replay.returncode == 1
    assert f"seed 0: event-budget at t={first['time']:.6f}" in replay.stdout
    assert "up to its event-budget violation" in replay.stdout


def test_progress_off_a_terminal_is_plain_lines() -> None:
    done = sim("--seeds", "3", "--progress", "--jobs", "1", "--duration", "40")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[-1].startswith("seeds 3/3, ")
    assert all(line.startswith("seeds ") for line in lines)
    assert "\r" not in done.stderr and "\x1b" not in done.stderr
    # Without --progress, and not on a terminal: nothing.
    assert sim("--seeds", "2", "--jobs", "1", "--duration", "40").stderr == ""


def test_progress_on_a_terminal_is_a_rich_bar() -> None:
    out = io.StringIO()
    progress = Progress(4, out, enabled=True, terminal=True)
    for failed in (False, True, False, False):
        progress.advance(failed)
    progress.close()
    text = out.getvalue()
    assert "\x1b[" in text and "━" in text
    assert "4/4" in text and "1 violating" in text


def test_progress_disabled_writes_nothing() -> None:
    out = io.StringIO()
    progress = Progress(3, out, enabled=False, terminal=True)
    progress.advance(True)
    progress.close()
    assert out.getvalue() == ""
