"""CLI tables: plain text off a terminal (what scripts read), rich's table on one."""

from __future__ import annotations

import pytest

from brio.cli import output


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output, "is_terminal", lambda: True)


def test_plain_table_is_aligned_with_no_trailing_spaces(
    capsys: pytest.CaptureFixture[str],
) -> None:
    output.print_table(
        ["Node ID", "Address", "Latency"],
        [["worker-1", "127.0.0.3:50051", "26ms"], ["w2", "[::1]:6000", "-"]],
    )
    assert capsys.readouterr().out == (
        "Node ID   Address          Latency\n"
        "worker-1  127.0.0.3:50051  26ms\n"
        "w2        [::1]:6000       -\n"
    )


def test_plain_table_is_never_wrapped_or_cut(capsys: pytest.CaptureFixture[str]) -> None:
    long = "n" * 300
    output.print_table(["Node ID", "Status"], [[long, "healthy"]])
    assert capsys.readouterr().out.splitlines()[1] == f"{long}  healthy"


def test_plain_table_with_no_rows_is_its_header(capsys: pytest.CaptureFixture[str]) -> None:
    output.print_table(["From", "To"], [])
    assert capsys.readouterr().out == "From  To\n"


def test_cells_are_text_not_markup(capsys: pytest.CaptureFixture[str]) -> None:
    output.print_fields([("error", "[bold]no[/bold] :smile: [link=x]y")])
    assert capsys.readouterr().out == "error  [bold]no[/bold] :smile: [link=x]y\n"


def test_plain_fields(capsys: pytest.CaptureFixture[str]) -> None:
    output.print_fields([("node_id", "worker-2"), ("active_agents", "0"), ("agents", "")])
    assert capsys.readouterr().out == "node_id        worker-2\nactive_agents  0\nagents\n"


def test_terminal_table_has_a_rule_under_the_header(
    terminal: None, capsys: pytest.CaptureFixture[str]
) -> None:
    output.print_table(["Node ID", "Latency"], [["worker-1", "26ms"]])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["Node", "ID", "Latency"]
    assert set(lines[1].strip()) == {"─"}
    assert lines[2].split() == ["worker-1", "26ms"]
    assert len(lines) == 3
