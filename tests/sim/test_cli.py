"""``python -m sim`` as a user meets it: the JSON summary, bad flags, and replaying a
violation from the command it prints."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sim.cli import main

ROOT = Path(__file__).resolve().parents[2]


def sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sim", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_json_summary_shape() -> None:
    done = sim("--seeds", "3", "--json", "--jobs", "1")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["seeds"] == {"first": 0, "count": 3}
    assert summary["unsafe"] == []
    assert summary["violations"] == []
    assert summary["config"]["nodes"] == 5
    assert summary["config"]["faults"] == [
        "loss", "dup", "reorder", "delay", "partition", "oneway", "isolate", "drift",
        "crash", "disk-loss", "pause",
    ]  # fmt: skip
    assert set(summary["failover"]) == {"count", "p50", "p90", "p99", "max"}
    assert summary["liveness"]["checked"] == summary["liveness"]["held"] == 3
    assert sum(summary["faults_injected"].values()) > 0
    assert summary["elections"] >= 3
    assert summary["simulated_seconds"] == 360
    assert summary["sim_seconds_per_wall_second"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "x"], "argument --nodes: expected an integer, got 'x'"),
        (["--nodes", "1"], "argument --nodes: expected at least 2 and at most 64, got 1"),
        (["--coordinators", "6"], "argument --coordinators: 6 is more than --nodes 5"),
        (["--faults", "loss,flood"], "argument --faults: unknown fault 'flood'"),
        (["--election-timeout", "2,1"], "argument --election-timeout: expected 0 < MIN <= MAX"),
        (["--election-timeout", "1"], "argument --election-timeout: expected MIN,MAX"),
        (["--max-clock-drift", "0.5"], "argument --max-clock-drift: expected at least 0 and"),
        (["--lease-duration", "nan"], "argument --lease-duration: expected at least 0.3"),
        (["--duration", "10"], "argument --duration: 10 s is too short"),
        (["--unsafe", "no-seatbelt"], "argument --unsafe: invalid choice: 'no-seatbelt'"),
        (["--seed", "1", "--seeds", "2"], "argument --seeds: not allowed with argument --seed"),
        (["--seed", "-1"], "argument --seed: expected at least 0, got -1"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_violation_prints_a_replay_that_reproduces_it() -> None:
    flags = ["--faults", "pause", "--unsafe", "no-fence-check", "--duration", "60"]
    done = sim("--seeds", "5", "--json", "--jobs", "1", *flags)
    assert done.returncode == 1
    violations = json.loads(done.stdout)["violations"]
    assert violations
    first = violations[0]
    command = shlex.split(first["replay"])
    assert command[:3] == ["python", "-m", "sim"]
    assert command[3:5] == ["--seed", str(first["seed"])]

    replay = sim(*command[3:])
    assert replay.returncode == 1
    assert "SAFETY MEASURES OFF" in replay.stdout and "no-fence-check" in replay.stdout
    assert f"seed {first['seed']}: {first['invariant']} at t={first['time']:.6f}" in replay.stdout
    assert f"replay: {first['replay']}" in replay.stdout
    assert "--- the last " in replay.stdout  # the trace that led there

    replayed = json.loads(sim(*command[3:], "--json").stdout)["violations"]
    assert replayed == [first]
