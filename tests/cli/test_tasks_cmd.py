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


TASK = {
    "id": "118bae43-a74d-427f-b885-4a290779be6e",
    "agent": "a-rather-long-agent-name",
    "status": "succeeded",
    "node_id": "worker-1",
    "attempt": 1,
    "session_id": None,
    "created_at": "2026-11-28T21:01:43.958555Z",
    "finished_at": "2026-11-28T21:01:44.001Z",
    "error": None,
    "result": {"answer": 42},
}


def test_task_list_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from brio.cli.tasks_cmd import _print_table

    _print_table([TASK, {**TASK, "id": "t2", "status": "queued", "node_id": None}])
    assert capsys.readouterr().out == (
        "ID                                    AGENT                     STATUS     NODE      "
        "CREATED\n"
        "118bae43-a74d-427f-b885-4a290779be6e  a-rather-long-agent-name  succeeded  worker-1  "
        "2026-11-28T21:01:43\n"
        "t2                                    a-rather-long-agent-name  queued     -         "
        "2026-11-28T21:01:43\n"
    )


def test_one_task_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from brio.cli.tasks_cmd import _print_task

    _print_task(TASK, as_json=False)
    assert capsys.readouterr().out == (
        "id        118bae43-a74d-427f-b885-4a290779be6e\n"
        "agent     a-rather-long-agent-name\n"
        "status    succeeded\n"
        "node      worker-1\n"
        "attempt   1\n"
        "session   -\n"
        "created   2026-11-28T21:01:43.958555Z\n"
        "finished  2026-11-28T21:01:44.001Z\n"
        'result    {"answer": 42}\n'
    )
