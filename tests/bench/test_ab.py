"""The benchmark suite's statistics (bench/ab.py) and what its report is made of: the A/B
alternation, medians and ranges, ratios to the baseline, the printed table, and the
conversion of bench/cluster.py's report. No timing is asserted: these are the maths."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.ab import alternate, figure, fmt, quantile, ratio, spread, table_rows
from bench.rows.cluster_rows import convert
from bench.rows.common import Settings, Unavailable
from bench.suite import ROWS, main, run_row


def test_alternation_runs_each_system_once_per_repetition_in_turn() -> None:
    calls: list[tuple[str, int]] = []

    def system(name: str) -> Callable[[int], dict[str, float]]:
        def run(rep: int) -> dict[str, float]:
            calls.append((name, rep))
            return {"value": rep}

        return run

    done = alternate(3, {"brio": system("brio"), "celery": system("celery")})
    assert calls == [
        ("brio", 0),
        ("celery", 0),
        ("brio", 1),
        ("celery", 1),
        ("brio", 2),
        ("celery", 2),
    ]
    assert done.order == ["brio", "celery"] * 3
    assert [r["value"] for r in done.runs["celery"]] == [0, 1, 2]


def test_spread_is_median_and_range_of_the_numbers_only() -> None:
    s = spread([3.0, None, 1.0, 10.0, float("nan")])
    assert (s["median"], s["min"], s["max"], s["n"]) == (3.0, 1.0, 10.0, 3)
    assert spread([2.0, 4.0])["median"] == 3.0
    empty = spread([None])
    assert empty["median"] is None and empty["n"] == 0


def test_ratio_is_system_over_baseline_and_none_without_one() -> None:
    assert ratio(150.0, 100.0) == 1.5
    assert ratio(1.0, 0.0) is None
    assert ratio(None, 3.0) is None


def test_quantile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert quantile(values, 0.5) == pytest.approx(50.5)
    assert quantile(values, 0.99) == pytest.approx(99.01)
    assert quantile([7.0], 0.99) == 7.0
    assert quantile([], 0.5) is None


def test_figure_gives_each_system_its_ratio_to_the_baseline() -> None:
    runs = {
        "brio": [{"rate": 90.0}, {"rate": 110.0}, {"rate": 100.0}],
        "celery": [{"rate": 400.0}, {"rate": 380.0}, {"rate": 420.0}],
    }
    fig = figure("tasks/s", "tasks/s", "higher", runs, lambda r: r["rate"], baseline="celery")
    assert fig["systems"]["brio"]["median"] == 100.0
    assert fig["systems"]["celery"]["median"] == 400.0
    assert fig["ratio"] == {"brio": 0.25}
    alone = figure("p50", "ms", "lower", {"brio": runs["brio"]}, lambda r: r["rate"], baseline=None)
    assert alone["ratio"] == {}
    with pytest.raises(ValueError, match="better"):
        figure("x", "ms", "sideways", runs, lambda r: r["rate"], baseline=None)


def test_table_has_a_line_per_system_and_says_why_a_row_did_not_run() -> None:
    runs = {"brio": [{"v": 2.0}, {"v": 4.0}], "bare": [{"v": 1.0}, {"v": 1.0}]}
    rows: list[dict[str, Any]] = [
        {
            "row": "serve",
            "figures": [figure("ready", "s", "lower", runs, lambda r: r["v"], baseline="bare")],
        },
        {"row": "batch", "available": False, "reason": "POST /api/tasks:batch answered 404"},
    ]
    lines = table_rows(rows)
    assert lines[0] == ["serve", "ready", "s, lower", "brio", "3 [2-4]", "3.00x", "2"]
    assert lines[1] == ["serve", "ready", "s, lower", "bare", "1 [1-1]", "baseline", "2"]
    assert lines[2][:2] == ["batch", "not available"] and "404" in lines[2][4]


def test_fmt_keeps_three_significant_digits_and_separates_thousands() -> None:
    assert fmt(1257.4) == "1,257"
    assert fmt(13.24) == "13.2"
    assert fmt(0.0123) == "0.0123"
    assert fmt(None) == "-"


def test_the_cluster_report_becomes_figures_with_the_single_node_as_baseline() -> None:
    fig = {
        "A": {"median": 84.0, "min": 80.0, "max": 90.0, "values": [80.0, 84.0, 90.0]},
        "B": {"median": 80.0, "min": 48.0, "max": 98.0, "values": [48.0, 80.0, 98.0]},
        "ratio": 80.0 / 84.0,
    }
    report = {
        "rows": [
            {"row": "throughput", "figures": {"202/s": fig}},
            {
                "row": "failover",
                "short": {"median": 2.0, "min": 1.9, "max": 2.1, "values": [1.9, 2.0, 2.1]},
            },
        ]
    }
    figures, notes = convert(report)
    assert figures[0]["baseline"] == "single node"
    assert figures[0]["ratio"] == {"coordinator + 2 workers": pytest.approx(0.952, abs=1e-3)}
    assert figures[0]["systems"]["single node"]["n"] == 3
    (note,) = notes
    assert note == (
        "worker failover (short detection): kill -9 -> its tasks running elsewhere "
        "2.00 s [1.90-2.10]"
    )


def test_unknown_rows_and_bad_reps_are_refused_naming_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--rows", "submit,nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--rows" in err and "nope" in err and ", ".join(ROWS) in err
    with pytest.raises(SystemExit):
        main(["--reps", "0"])
    assert "--reps" in capsys.readouterr().err


def test_a_row_that_cannot_run_says_why_and_still_records_the_machine(tmp_path: Path) -> None:
    def missing(settings: Settings) -> dict[str, object]:
        raise Unavailable(
            "redis-server is not on PATH; install it with: apt-get install -y redis-server"
        )

    def broken(settings: Settings) -> dict[str, object]:
        raise KeyError("rate")

    settings = Settings(
        reps=1, seconds=0.1, warmup=0.0, single_seconds=0.1, smoke=True, tmp=tmp_path
    )
    row = run_row("submit", missing, settings)
    assert row["row"] == "submit" and row["available"] is False
    assert "apt-get install -y redis-server" in row["reason"]
    assert set(row["machine_cpu"]) == {"cores_busy", "other_cores", "load_average"}
    failed = run_row("batch", broken, settings)
    assert failed["failed"] is True and "KeyError('rate')" in failed["reason"]
    assert table_rows([row, failed])[1][:2] == ["batch", "not available"]


def test_cluster_rows_not_known_by_name_take_their_sides_from_what_they_say() -> None:
    nan = float("nan")
    spread_ = {"median": 0.0, "min": 0.0, "max": 0.0, "values": [0.0]}
    row = {
        "row": "scale-out-wide",
        "what": "sleep 1000 ms, 100 closed-loop users: 1 worker (A) vs 2 (B)",
        "figures": {"completed/s": {"A": spread_, "B": spread_, "ratio": nan}},
    }
    (fig,), _ = convert({"rows": [row]})
    assert list(fig["systems"]) == ["1 worker", "2"]
    assert fig["ratio"] == {"2": None}
