"""The `brio tasks` client's output."""

import pytest

from brio.cli.tasks_cmd import EventPrinter


def test_event_printer_breaks_lines_only_after_streamed_output(
    capsys: pytest.CaptureFixture[str],
) -> None:
    show = EventPrinter(as_json=False)
    show({"type": "task_update", "task_id": "t", "data": {"status": "running", "attempt": 1}})
    show({"type": "task_output", "task_id": "t", "data": {"chunk": "Hel"}})
    show({"type": "task_output", "task_id": "t", "data": {"chunk": "lo"}})
    show({"type": "task_completed", "task_id": "t", "data": {"status": "succeeded", "result": "x"}})
    show({"type": "task_completed", "task_id": "u", "data": {"status": "failed", "error": "e"}})
    assert capsys.readouterr().out == (
        "[t] running (attempt 1, node -)\nHello\n[t] succeeded: x\n[u] failed: e\n"
    )
