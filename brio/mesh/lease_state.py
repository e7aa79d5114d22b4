"""The lease voter's durable state: its current term, and whom it voted for in that term.

Raft's one rule that must survive a crash is "at most one vote per term". The driver saves
the state before it sends the vote (``brio.core.lease``'s ``Persist`` action comes first), so
a save returns only once the state is on disk: written to a temporary file, fsynced, renamed
over ``<data_dir>/lease-state.json``, and the directory fsynced so that the rename itself
survives a power cut. A crash at any point leaves either the old file or the new one.

A file that cannot be read is an error, never a fresh start at term 0: a voter that forgot
its vote could give a second one in the same term, and two candidates could both win it.

Only one process uses a data dir (``brio.node.data_dir`` locks it), so the temporary file
has a fixed name: a leftover of a crash is never read, and the next save overwrites it.
Both functions block on the disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

LEASE_STATE_FILE = "lease-state.json"
VERSION = 1


class LeaseStateError(Exception):
    """The lease state file cannot be read or written; the message names the file."""


class LeaseState(NamedTuple):
    """What a voter must not forget; a plain ``(term, voted_for)`` pair when unpacked."""

    term: int
    voted_for: str | None  # None: no vote given in this term


def state_path(data_dir: Path) -> Path:
    return data_dir / LEASE_STATE_FILE


def load_lease_state(data_dir: Path) -> LeaseState | None:
    """The saved state, or None when nothing was ever saved in ``data_dir``.

    Raises LeaseStateError, naming the file and what is wrong with it, for a file that is
    unreadable, truncated, not the expected JSON, of an unknown version, or holds a value
    of the wrong type or a negative term.
    """
    path = state_path(data_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _error(path, f"cannot read it: {exc.strerror or exc}") from None
    return _parse(path, raw)


def save_lease_state(data_dir: Path, term: int, voted_for: str | None) -> None:
    """Replace the saved state, durably, before returning; LeaseStateError if that fails.

    ValueError for a state that ``load_lease_state`` would refuse (a negative term, an empty
    node id): it is a bug in the caller, and must not reach the disk.
    """
    problem = _check_term(term) or _check_voted_for(voted_for)
    if problem:
        raise ValueError(f"cannot save the lease state: {problem}")
    path = state_path(data_dir)
    tmp = path.with_name(path.name + ".tmp")
    data = json.dumps({"version": VERSION, "term": term, "voted_for": voted_for}) + "\n"
    try:
        with open(tmp, "wb") as file:
            file.write(data.encode())
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
        _fsync_dir(data_dir)
    except OSError as exc:
        raise LeaseStateError(f"{path}: cannot save it: {exc.strerror or exc}") from None


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (the file's own fsync does not cover it)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _error(path: Path, problem: str) -> LeaseStateError:
    return LeaseStateError(
        f"{path}: {problem}; refusing to start over at term 0, which could give a second "
        "vote in a term this node already voted in"
    )


def _parse(path: Path, raw: bytes) -> LeaseState:
    if not raw.strip():
        raise _error(path, "the file is empty")
    try:
        data: Any = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _error(path, "not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise _error(path, f"not valid JSON, truncated or damaged ({exc.msg})") from None
    if not isinstance(data, dict):
        raise _error(path, f"expected a JSON object, got {type(data).__name__}")
    missing = [key for key in ("version", "term", "voted_for") if key not in data]
    if missing:
        raise _error(path, f"missing {', '.join(missing)}")
    version = data["version"]
    if type(version) is not int or version != VERSION:
        raise _error(path, f"unknown version {version!r} (this brio reads version {VERSION})")
    problem = _check_term(data["term"]) or _check_voted_for(data["voted_for"])
    if problem:
        raise _error(path, problem)
    return LeaseState(data["term"], data["voted_for"])


def _check_term(term: object) -> str:
    # type() rather than isinstance(): a bool is an int to Python, not a term.
    if type(term) is not int:
        return f"term: expected a whole number, got {term!r}"
    if term < 0:
        return f"term: expected 0 or more, got {term}"
    return ""


def _check_voted_for(voted_for: object) -> str:
    if voted_for is None or (isinstance(voted_for, str) and voted_for):
        return ""
    return f"voted_for: expected a node id or null, got {voted_for!r}"
