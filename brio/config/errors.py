"""The one exception that configuration loading raises, and how its lines are written.

An operator reads these messages at start-up, often in a container log, so each problem is a
single line that says where (the file or the environment variable), which key (in the form
written in TOML), what was given and what was expected. Never a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence

_GIVEN_LIMIT = 60


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` holds one readable line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


def problem(where: str, key: str | None, detail: str) -> str:
    """One problem line: ``where: key: detail`` (the key is left out when there is none)."""
    if key:
        return f"{where}: {key}: {detail}"
    return f"{where}: {detail}"


def shorten(text: str, limit: int = _GIVEN_LIMIT) -> str:
    """Cut long values so that one problem stays one readable line."""
    if len(text) <= limit:
        return text
    return text[: limit - 3] + "..."
