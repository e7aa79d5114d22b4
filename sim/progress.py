"""Progress of a multi-seed run on stderr: rich's progress bar on a terminal, plain lines when
not (``--progress`` into a file or a CI log: a line every tenth of the run, no cursor tricks).

Wall-clock time appears only here, in what a person watches, never in anything a seed
computes.
"""

from __future__ import annotations

import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress


class Progress:
    def __init__(
        self, total: int, stream: TextIO, *, enabled: bool, terminal: bool | None = None
    ) -> None:
        """``terminal``: draw the bar (default: when ``stream`` is a terminal)."""
        self._total = total
        self._stream = stream
        self._enabled = enabled
        self._done = 0
        self._failed = 0
        self._started = time.perf_counter()
        self._next_line = 0
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None
        if not enabled:
            return
        if terminal is None:
            terminal = stream.isatty()
        if terminal:
            console = Console(file=stream, force_terminal=True)
            self._bar = RichProgress(
                TextColumn("seeds"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[failed]}"),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                console=console,
            )
            self._task = self._bar.add_task("seeds", total=total, failed="")
            self._bar.start()

    def advance(self, failed: bool) -> None:
        self._done += 1
        self._failed += failed
        if not self._enabled:
            return
        if self._bar is not None and self._task is not None:
            shown = f"[red]{self._failed} violating[/]" if self._failed else ""
            self._bar.update(self._task, advance=1, failed=shown)
        elif self._done >= self._next_line or self._done == self._total:
            # Plain: about ten lines per run, the last one at the end.
            self._next_line = self._done + max(1, self._total // 10)
            note = f", {self._failed} violating" if self._failed else ""
            elapsed = time.perf_counter() - self._started
            self._stream.write(f"seeds {self._done}/{self._total}{note}, {elapsed:.0f} s\n")
            self._stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
