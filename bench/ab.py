"""The statistics of the benchmark suite, apart from any process or socket so that a test can
check them: A/B alternation, medians with their range, ratios to a baseline, and the rows of
the printed table.

A row runs several *systems* (Brio on SQLite, Brio on PostgreSQL, Celery, ...) in the same
run, one repetition of each in turn (A B C A B C ...), so that a change in the machine's load
lands on all of them alike. A *figure* (tasks/s, p50 ms, ...) is summarised per system as
the median of its repetitions with min and max; its ratio is a system's median over the
baseline's median, so 2.0 on tasks/s means twice the baseline's throughput and 2.0 on a
latency means twice the baseline's latency (``better`` says which way is good).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Run = dict[str, Any]


@dataclass
class Alternation:
    """The runs of each system, and the order in which they ran (for the report)."""

    runs: dict[str, list[Run]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)


def alternate(reps: int, systems: Mapping[str, Callable[[int], Run]]) -> Alternation:
    """Run each system once per repetition, in the mapping's order, ``reps`` times."""
    out = Alternation({name: [] for name in systems})
    for rep in range(reps):
        for name, run in systems.items():
            out.runs[name].append(run(rep))
            out.order.append(name)
    return out


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Median, min and max of the values that are numbers; ``None`` when there are none."""
    numbers = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not numbers:
        return {"median": None, "min": None, "max": None, "n": 0, "values": list(values)}
    return {
        "median": statistics.median(numbers),
        "min": min(numbers),
        "max": max(numbers),
        "n": len(numbers),
        "values": list(values),
    }


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline


def quantile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0-1) by linear interpolation between the closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def figure(
    name: str,
    unit: str,
    better: str,
    runs: Mapping[str, Sequence[Run]],
    get: Callable[[Run], float | None],
    *,
    baseline: str | None,
) -> dict[str, Any]:
    """One figure over every system's runs: a spread per system and each one's ratio to
    ``baseline`` (none for the baseline itself, or when the row has no baseline)."""
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower', not {better!r}")
    systems = {system: spread([get(r) for r in items]) for system, items in runs.items()}
    base = systems[baseline]["median"] if baseline is not None else None
    ratios = {
        system: ratio(s["median"], base)
        for system, s in systems.items()
        if baseline is not None and system != baseline
    }
    return {
        "figure": name,
        "unit": unit,
        "better": better,
        "baseline": baseline,
        "systems": systems,
        "ratio": ratios,
    }


def fmt(value: float | None) -> str:
    """A figure for the table: three significant digits, thousands separated."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def table_rows(rows: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """The printed table, one line per system and figure: row, figure, unit and which way is
    better, system, median [min-max], ratio to the baseline (or ``baseline``), repetitions.
    A row that could not run is one line saying why."""
    lines: list[list[str]] = []
    for row in rows:
        if not row.get("available", True):
            reason = str(row.get("reason", ""))
            lines.append([row["row"], "not available", "", "", reason, "", ""])
            continue
        for fig in row.get("figures", []):
            label = fig["figure"]
            unit = f"{fig['unit']}, {fig['better']}"
            for system, s in fig["systems"].items():
                cell = (
                    f"{fmt(s['median'])} [{fmt(s['min'])}-{fmt(s['max'])}]"
                    if s["n"] > 1
                    else fmt(s["median"])
                )
                if system == fig["baseline"]:
                    r = "baseline"
                elif system in fig["ratio"]:
                    value = fig["ratio"][system]
                    r = f"{value:.2f}x" if value is not None else "-"
                else:
                    r = ""
                lines.append([row["row"], label, unit, system, cell, r, str(s["n"])])
    return lines
