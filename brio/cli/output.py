"""Tables and ``key  value`` lists for the CLI, drawn by rich.

On a terminal, rich fits the table to the window, bolds the header and rules it off. Anywhere
else (a pipe, a file, a test) the same table comes out plain, for ``grep``/``awk``/``cut``:
no styles, no rule, columns two spaces apart, never wrapped, no trailing spaces, one row a
line. ``--json`` does not come through here.

rich is imported by the functions, not by this module, so that a command that prints no
table does not load it (issue 9: a CLI call starts fast).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import RenderableType

# Wide enough that no plain table is wrapped; rich lays a table out within the console width.
_PLAIN_WIDTH = 1_000_000


def is_terminal() -> bool:
    """Whether stdout is a terminal (tests replace this to see the terminal form)."""
    return sys.stdout.isatty()


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A table with a header row; cells are shown as text, never as rich markup."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    terminal = is_terminal()
    table = Table(
        box=box.SIMPLE_HEAD if terminal else None,
        show_edge=False,
        pad_edge=False,
        header_style="bold" if terminal else "",
    )
    for header in headers:
        table.add_column(header, no_wrap=not terminal)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    _print(table, terminal)


def print_fields(fields: Sequence[tuple[str, str]]) -> None:
    """``key  value`` lines, the values lined up in one column."""
    from rich.table import Table
    from rich.text import Text

    terminal = is_terminal()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold" if terminal else "", no_wrap=True)
    grid.add_column(no_wrap=not terminal)
    for key, value in fields:
        grid.add_row(Text(key), Text(value))
    _print(grid, terminal)


def _print(renderable: RenderableType, terminal: bool) -> None:
    from rich.console import Console

    if terminal:
        Console(highlight=False).print(renderable)
        return
    console = Console(width=_PLAIN_WIDTH, no_color=True, highlight=False)
    with console.capture() as captured:
        console.print(renderable)
    # rich pads every cell to its column's width, the last one too.
    for line in captured.get().splitlines():
        print(line.rstrip())
