"""Who used the CPU during a benchmark phase: the machine (``/proc/stat``), each process the
benchmark started (``/proc/PID/stat``), and the load generator (``os.times`` of children).

``Meter.start()`` snapshots, ``Meter.stop()`` returns CPU seconds per named group and
``other``: the machine's busy time minus everything the benchmark accounts for, i.e. the
other engineers' processes that ran meanwhile.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, object]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the machine since boot, all cores."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return (total - idle) / TICK, total / TICK


def pid_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (0 once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    rest = text.rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / TICK


def children_of(pid: int) -> list[int]:
    """The direct children of ``pid`` (PostgreSQL's backends, for the postmaster)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            rest = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(rest[1]) == pid:
            found.append(int(entry.name))
    return found


def children_seconds() -> float:
    times = os.times()
    return times.children_user + times.children_system


@dataclass
class Meter:
    """CPU per group over one phase; ``groups`` name -> a function giving the pids now."""

    groups: dict[str, Callable[[], list[int]]]
    _start: dict[str, dict[int, float]] = field(default_factory=dict)
    _busy: float = 0.0
    _total: float = 0.0
    _children: float = 0.0
    _wall: float = 0.0

    def start(self) -> None:
        self._start = {
            name: {p: pid_seconds(p) for p in pids()} for name, pids in self.groups.items()
        }
        self._busy, self._total = busy_seconds()
        self._children = children_seconds()
        self._wall = time.perf_counter()

    def stop(self) -> dict[str, float]:
        """CPU seconds per group, ``loadgen`` (reaped children), ``other``, ``machine`` and
        ``wall``; a process that started during the phase counts from 0."""
        used: dict[str, float] = {}
        for name, pids in self.groups.items():
            before = self._start.get(name, {})
            used[name] = sum(pid_seconds(p) - before.get(p, 0.0) for p in pids())
        used["loadgen"] = children_seconds() - self._children
        ours = sum(used.values())
        busy, total = busy_seconds()
        used["machine"] = busy - self._busy
        used["other"] = max(0.0, used["machine"] - ours)
        used["wall"] = time.perf_counter() - self._wall
        used["capacity"] = total - self._total
        return used
