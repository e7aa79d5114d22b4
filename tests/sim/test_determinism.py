"""The same seed replays the same trace, byte for byte, in this process and in others with a
different string-hash seed (PYTHONHASHSEED), and whatever the worker count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sim.config import SimConfig
from sim.world import run_seed

ROOT = Path(__file__).resolve().parents[2]


def test_same_seed_same_trace_in_process() -> None:
    config = SimConfig(duration=60.0)
    first = run_seed(config, 7, keep_trace=True)
    second = run_seed(config, 7, keep_trace=True)
    assert len(first.trace) > 100
    assert first.trace == second.trace
    assert first == second
    assert run_seed(config, 8, keep_trace=True).trace != first.trace


def _trace(hash_seed: str) -> bytes:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run(
        [sys.executable, "-m", "sim", "--seed", "5", "--duration", "60", "--trace"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=True,
    )
    # The summary's speed line is wall-clock time; everything else must match.
    return b"\n".join(line for line in done.stdout.splitlines() if not line.startswith(b"speed"))


def test_same_seed_same_trace_across_processes() -> None:
    one, two = _trace("1"), _trace("2")
    assert one.count(b"\n") > 100
    assert one == two


def test_worker_count_does_not_change_results() -> None:
    def run(jobs: str) -> bytes:
        done = subprocess.run(
            [sys.executable, "-m", "sim", "--seeds", "4", "--duration", "50", "--jobs", jobs],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        lines = done.stdout.splitlines()
        return b"\n".join(line for line in lines if not line.startswith(b"speed"))

    assert run("1") == run("2")
