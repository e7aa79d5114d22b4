"""The shell agent: allowlist, sandbox directory, limits, and no leaked processes."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio

from brio.agents.base import Agent, AgentContext, AgentError
from brio.agents.shell import make_shell_agent
from brio.config.model import AgentConfig, BrioConfig


def shell_agent(*allowed: str, **settings: Any) -> Agent:
    config = AgentConfig(kind="shell", allowed_commands=list(allowed), **settings)
    return make_shell_agent("sh1", config, BrioConfig())


def context(prompt: str = "", chunks: list[str] | None = None, **input: Any) -> AgentContext:
    sink = chunks if chunks is not None else []

    async def emit(chunk: str) -> None:
        sink.append(chunk)

    return AgentContext(
        task_id="t1",
        agent="sh1",
        prompt=prompt,
        input=input,
        history=[],
        session_id=None,
        attempt=1,
        cancel_scope=trio.CancelScope(),
        emit_fn=emit,
    )


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its reaper counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def test_empty_allowlist_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match=r"agents\.sh1\.allowed_commands"):
        shell_agent()


async def test_runs_in_a_fresh_temporary_directory_that_is_removed() -> None:
    agent = shell_agent("pwd")
    result = await agent(context("pwd"))
    workdir = result["stdout"].strip()
    assert result == {"exit_code": 0, "stdout": workdir + "\n", "stderr": "", "truncated": False}
    assert (
        await trio.Path(workdir).parent.resolve()
        == await trio.Path(tempfile.gettempdir()).resolve()
    )
    assert Path(workdir).name.startswith("brio-shell-")
    assert not await trio.Path(workdir).exists()
    again = await agent(context("pwd"))
    assert again["stdout"].strip() != workdir


async def test_directory_starts_empty() -> None:
    result = await shell_agent("ls")(context("ls -A"))
    assert result["stdout"] == ""
    assert result["exit_code"] == 0


async def test_stdout_is_streamed_through_emit() -> None:
    chunks: list[str] = []
    result = await shell_agent("echo")(context(chunks=chunks, command=["echo", "a  b", "c"]))
    assert result["stdout"] == "a  b c\n"
    assert "".join(chunks) == "a  b c\n"


async def test_command_string_in_input_is_split_with_shlex() -> None:
    result = await shell_agent("echo")(context("ignored prompt", command="echo 'x   y'"))
    assert result["stdout"] == "x   y\n"


async def test_environment_is_minimal_and_stdin_closed() -> None:
    agent = shell_agent("env", "cat")
    env_out = (await agent(context("env")))["stdout"]
    names = sorted(line.split("=", 1)[0] for line in env_out.splitlines())
    assert names == ["HOME", "PATH"]
    with trio.fail_after(5):  # cat would wait forever on an open stdin
        assert (await agent(context("cat")))["stdout"] == ""


async def test_disallowed_command_is_refused() -> None:
    with pytest.raises(AgentError, match=r"'rm' is not allowed"):
        await shell_agent("ls")(context("rm -rf /"))


@pytest.mark.parametrize("program", ["/bin/ls", "./ls", "../ls", "ls/", " ls"])
async def test_path_tricks_are_refused(program: str) -> None:
    with pytest.raises(AgentError, match="not allowed"):
        await shell_agent("ls")(context(command=[program]))


async def test_an_exact_path_can_be_allowed() -> None:
    ls = "/bin/ls" if await trio.Path("/bin/ls").exists() else "/usr/bin/ls"
    assert (await shell_agent(ls)(context(ls)))["exit_code"] == 0


async def test_no_shell_is_involved() -> None:
    result = await shell_agent("echo")(context("echo $HOME; rm -rf / `id` | cat"))
    assert result["stdout"] == "$HOME; rm -rf / `id` | cat\n"


async def test_missing_or_malformed_command() -> None:
    agent = shell_agent("echo")
    with pytest.raises(AgentError, match="no command"):
        await agent(context("   "))
    with pytest.raises(AgentError, match="cannot parse"):
        await agent(context("echo 'unclosed"))
    with pytest.raises(AgentError, match="list of strings"):
        await agent(context(command=["echo", 3]))


async def test_allowed_but_missing_program() -> None:
    with pytest.raises(AgentError, match="not found on PATH"):
        await shell_agent("no-such-program-brio")(context("no-such-program-brio"))


async def test_timeout_kills_the_command() -> None:
    chunks: list[str] = []
    agent = shell_agent("sh", command_timeout=0.3)
    start = trio.current_time()
    with pytest.raises(AgentError, match=r"timed out after 0\.3s"):
        await agent(context(chunks=chunks, command=["sh", "-c", "echo $$; exec sleep 5"]))
    assert trio.current_time() - start < 2
    assert not alive(int("".join(chunks)))


@pytest.mark.parametrize("command", ["yes", "seq 1 1000000"])
async def test_output_cap_truncates_and_stops_the_command(command: str) -> None:
    chunks: list[str] = []
    agent = shell_agent("yes", "seq", max_output_bytes=1000, command_timeout=10)
    with trio.fail_after(5):
        result = await agent(context(command, chunks=chunks))
    assert result["truncated"] is True
    assert len(result["stdout"]) == 1000
    assert "".join(chunks) == result["stdout"]


async def test_output_under_the_cap_is_not_truncated() -> None:
    result = await shell_agent("seq", max_output_bytes=1000)(context("seq 1 10"))
    assert result["truncated"] is False
    assert result["stdout"].split() == [str(n) for n in range(1, 11)]


async def test_non_zero_exit_fails_with_code_and_stderr() -> None:
    with pytest.raises(AgentError) as caught:
        await shell_agent("ls")(context("ls /no/such/dir-brio"))
    message = str(caught.value)
    assert re.search(r"exit code [1-9]", message)
    assert "/no/such/dir-brio" in message


async def test_cancellation_kills_the_child_and_its_children() -> None:
    output: list[str] = []
    got_pids = trio.Event()

    async def emit(chunk: str) -> None:
        output.append(chunk)
        if "".join(output).endswith("\n"):
            got_pids.set()

    ctx = context(command=["sh", "-c", "sleep 30 & echo $$ $!; wait"])
    ctx.emit_fn = emit  # the shell prints its own pid and its background child's
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shell_agent("sh"), ctx)
        with trio.fail_after(5):
            await got_pids.wait()
        nursery.cancel_scope.cancel()
    shell_pid, sleep_pid = (int(pid) for pid in "".join(output).split())
    assert not alive(shell_pid)  # killed and reaped by the agent before it returned
    for _ in range(500):  # the orphaned grandchild is reaped by init, eventually
        if not alive(sleep_pid):
            break
        await trio.sleep(0.01)
    assert not alive(sleep_pid)
