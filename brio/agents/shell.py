"""The ``shell`` agent: run one allow-listed program per task, never through a shell.

It is disabled unless ``agents.<name>.allowed_commands`` lists programs, because running
commands on a node is the most dangerous thing an agent can do. Each task:

* takes its command line from ``input["command"]`` (an argv list, or a string split with
  ``shlex``) or, failing that, from the prompt (``shlex`` split);
* refuses it unless ``argv[0]`` is *exactly* one of ``allowed_commands`` -- ``"./ls"`` or
  ``"/bin/ls"`` do not match ``"ls"``, so a task cannot swap in another binary by path;
* runs it with no shell, stdin closed, in a fresh temporary directory (deleted afterwards),
  with an environment of only ``PATH`` and ``HOME`` (the temporary directory), so the node's
  secrets in its own environment do not leak into commands;
* bounds it in time (``command_timeout``) and output (``max_output_bytes`` of stdout and
  stderr together); the child runs in its own session so that a timeout, an output overflow
  or a task cancellation kills the whole process group, grandchildren included.

Stdout is streamed through ``ctx.emit`` as it arrives. The result is
``{"exit_code", "stdout", "stderr", "truncated"}``; a non-zero exit raises ``AgentError``
(except after an output overflow, where the node itself killed the command).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from brio.agents.base import Agent, AgentContext, AgentError
from brio.config.model import AgentConfig, BrioConfig

_READ_SIZE = 65_536
_STDERR_TAIL_CHARS = 500


def make_shell_agent(name: str, settings: AgentConfig, config: BrioConfig) -> Agent:
    """Build the shell agent for ``[agents.<name>]``; refuse to build one with no allowlist."""
    if not settings.allowed_commands:
        raise ValueError(
            f"agents.{name}.allowed_commands is empty: a shell agent runs nothing unless "
            "its programs are listed there explicitly"
        )
    allowed = frozenset(settings.allowed_commands)
    search_path = _search_path()
    timeout = settings.command_timeout
    max_output_bytes = settings.max_output_bytes

    async def shell_agent(ctx: AgentContext) -> dict[str, Any]:
        """Run one allow-listed command in a throwaway directory and return its output."""
        argv = _command_line(ctx)
        if argv[0] not in allowed:
            raise AgentError(
                f"command {argv[0]!r} is not allowed (agents.{name}.allowed_commands: "
                f"{', '.join(sorted(allowed))})"
            )
        executable = _resolve(argv[0], search_path)
        return await _run_command(
            argv,
            executable=executable,
            search_path=search_path,
            time_limit=timeout,
            max_output_bytes=max_output_bytes,
            emit=ctx.emit,
        )

    return shell_agent


async def _run_command(
    argv: list[str],
    *,
    executable: str,
    search_path: str,
    time_limit: float,
    max_output_bytes: int,
    emit: Callable[[str], Awaitable[None]],
) -> dict[str, Any]:
    """Run ``argv`` (already allow-listed) in a throwaway directory and collect its output."""
    workdir = tempfile.mkdtemp(prefix="brio-shell-")
    try:
        return await _run_in(
            argv,
            executable=executable,
            workdir=workdir,
            env={"PATH": search_path, "HOME": workdir},
            time_limit=time_limit,
            max_output_bytes=max_output_bytes,
            emit=emit,
        )
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, workdir, True)


@dataclass(slots=True)
class _Output:
    """Bytes captured so far; ``limit`` bounds stdout and stderr together."""

    limit: int
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    truncated: bool = False

    def room(self) -> int:
        return self.limit - len(self.stdout) - len(self.stderr)


async def _run_in(
    argv: list[str],
    *,
    executable: str,
    workdir: str,
    env: dict[str, str],
    time_limit: float,
    max_output_bytes: int,
    emit: Callable[[str], Awaitable[None]],
) -> dict[str, Any]:
    try:
        process = await trio.lowlevel.open_process(
            argv,
            executable=executable,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=env,
            start_new_session=True,  # own process group: killable as a whole
        )
    except OSError as exc:
        raise AgentError(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from exc
    assert process.stdout is not None and process.stderr is not None
    output = _Output(limit=max_output_bytes)
    try:
        with trio.move_on_after(time_limit) as deadline:
            async with trio.open_nursery() as nursery:

                def overflow() -> None:
                    output.truncated = True
                    _kill_group(process)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(_pump, process.stdout, output.stdout, output, overflow, emit)
                nursery.start_soon(_pump, process.stderr, output.stderr, output, overflow, None)
            await process.wait()
        if deadline.cancelled_caught:
            raise AgentError(f"{argv[0]} timed out after {time_limit:g}s")
    finally:
        # Whatever happened (normal exit, timeout, overflow, cancellation of the task), the
        # group is killed and the child reaped before we return: nothing outlives the task.
        _kill_group(process)
        with trio.CancelScope(shield=True):
            await process.wait()
            await process.stdout.aclose()
            await process.stderr.aclose()

    exit_code = process.returncode
    assert exit_code is not None  # reaped in the finally block above
    stdout = output.stdout.decode("utf-8", errors="replace")
    stderr = output.stderr.decode("utf-8", errors="replace")
    if exit_code != 0 and not output.truncated:
        tail = stderr.strip()[-_STDERR_TAIL_CHARS:] or "(no stderr)"
        how = f"exit code {exit_code}" if exit_code > 0 else f"signal {-exit_code}"
        raise AgentError(f"{argv[0]} failed with {how}: {tail}")
    return {
        "exit_code": exit_code,
        "stdout": stdout,
        "stderr": stderr,
        "truncated": output.truncated,
    }


async def _pump(
    stream: trio.abc.ReceiveStream,
    sink: bytearray,
    output: _Output,
    overflow: Callable[[], None],
    emit: Callable[[str], Awaitable[None]] | None,
) -> None:
    """Copy one pipe into ``sink`` until EOF or the shared output budget runs out."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        data = await stream.receive_some(_READ_SIZE)
        if not data:
            break
        room = output.room()
        over = len(data) > room
        data = data[:room]
        sink += data
        if emit is not None and (text := decoder.decode(data, final=over)):
            await emit(text)
        if over:
            overflow()
            return
    if emit is not None and (text := decoder.decode(b"", final=True)):
        await emit(text)


def _kill_group(process: trio.Process) -> None:
    # ESRCH: the group is already gone; EPERM: on some systems a group made only of zombies
    # refuses signals. Either way there is nothing left to kill.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _command_line(ctx: AgentContext) -> list[str]:
    """The task's argv: ``input["command"]`` (list or string) or else the prompt."""
    raw = ctx.input.get("command", ctx.prompt)
    if isinstance(raw, str):
        try:
            argv = shlex.split(raw)
        except ValueError as exc:
            raise AgentError(f"cannot parse command line {raw!r}: {exc}") from exc
    elif isinstance(raw, list) and all(isinstance(arg, str) for arg in raw):
        argv = list(raw)
    else:
        raise AgentError("input.command must be a string or a list of strings")
    if not argv or not argv[0]:
        raise AgentError("no command given (set input.command or the prompt)")
    if any("\0" in arg for arg in argv):
        raise AgentError("command arguments must not contain NUL bytes")
    return argv


def _search_path() -> str:
    """The node's PATH without relative entries, which would resolve inside the work dir."""
    entries = os.environ.get("PATH", os.defpath).split(os.pathsep)
    return os.pathsep.join(entry for entry in entries if os.path.isabs(entry))


def _resolve(program: str, search_path: str) -> str:
    """Find the file to execute; an allow-listed path (containing ``/``) is used as given."""
    if "/" in program:
        return program
    found = shutil.which(program, path=search_path)
    if found is None:
        raise AgentError(f"command {program!r} not found on PATH")
    return found
