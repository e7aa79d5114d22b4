"""The lease voter's state on disk: saved durably (temp file, fsync, rename, fsync of the
directory), read back exactly, and never silently reset when the file is damaged."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from brio.mesh.lease_state import (
    LEASE_STATE_FILE,
    LeaseState,
    LeaseStateError,
    load_lease_state,
    save_lease_state,
)


class Crash(BaseException):
    """The process dies here: nothing after it runs, no cleanup that could hide the damage."""


def test_nothing_saved_yet(tmp_path: Path) -> None:
    assert load_lease_state(tmp_path) is None


@pytest.mark.parametrize(("term", "voted_for"), [(0, None), (1, "c1"), (7, None), (2**62, "é")])
def test_round_trip(tmp_path: Path, term: int, voted_for: str | None) -> None:
    save_lease_state(tmp_path, term, voted_for)
    loaded = load_lease_state(tmp_path)
    assert loaded == (term, voted_for)
    assert loaded == LeaseState(term=term, voted_for=voted_for)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LEASE_STATE_FILE]  # no temp left


def test_the_file_format(tmp_path: Path) -> None:
    save_lease_state(tmp_path, 3, "c2")
    save_lease_state(tmp_path, 4, None)  # a newer term, no vote in it yet
    text = (tmp_path / LEASE_STATE_FILE).read_text(encoding="utf-8")
    assert json.loads(text) == {"version": 1, "term": 4, "voted_for": None}


def test_save_writes_a_temp_file_fsyncs_renames_then_fsyncs_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_lease_state(tmp_path, 1, "c1")
    target = tmp_path / LEASE_STATE_FILE
    calls: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            calls.append(("fsync dir", str(info.st_ino)))
        else:
            # At this point the target must still hold the old state: the new one is elsewhere.
            assert load_lease_state(tmp_path) == (1, "c1")
            calls.append(("fsync file", str(info.st_ino)))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(("replace", Path(src).name, str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_lease_state(tmp_path, 2, "c2")

    new_inode = str(target.stat().st_ino)  # a rename keeps the temp file's inode
    assert calls == [
        ("fsync file", new_inode),
        ("replace", f"{LEASE_STATE_FILE}.tmp", str(target)),
        ("fsync dir", str(tmp_path.stat().st_ino)),
    ]
    assert load_lease_state(tmp_path) == (2, "c2")


def test_a_crash_before_the_rename_leaves_the_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_lease_state(tmp_path, 5, "c1")

    def die(src: object, dst: object) -> None:
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", die)
        with pytest.raises(Crash):
            save_lease_state(tmp_path, 6, "c3")
    leftover = tmp_path / f"{LEASE_STATE_FILE}.tmp"
    assert json.loads(leftover.read_text())["term"] == 6  # written, but never renamed
    assert load_lease_state(tmp_path) == (5, "c1")  # after the "restart": the old vote holds

    save_lease_state(tmp_path, 6, "c2")  # the next save goes over the leftover
    assert load_lease_state(tmp_path) == (6, "c2")
    assert not leftover.exists()


def test_a_crash_half_way_through_the_temp_file_does_not_break_load(tmp_path: Path) -> None:
    save_lease_state(tmp_path, 9, None)
    (tmp_path / f"{LEASE_STATE_FILE}.tmp").write_text('{"version": 1, "te')
    assert load_lease_state(tmp_path) == (9, None)


def test_a_failed_fsync_is_an_error_not_a_silent_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_lease_state(tmp_path, 1, "c1")

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(LeaseStateError) as caught:
        save_lease_state(tmp_path, 2, "c2")
    assert str(caught.value) == (
        f"{tmp_path / LEASE_STATE_FILE}: cannot save it: Input/output error"
    )
    monkeypatch.undo()
    assert load_lease_state(tmp_path) == (1, "c1")


def test_saving_into_a_missing_directory_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    with pytest.raises(LeaseStateError, match=f"^{missing / LEASE_STATE_FILE}: cannot save it"):
        save_lease_state(missing, 1, "c1")


@pytest.mark.parametrize(
    ("term", "voted_for", "message"),
    [
        (-1, None, "term: expected 0 or more, got -1"),
        (True, None, "term: expected a whole number, got True"),
        (1, "", "voted_for: expected a node id or null, got ''"),
    ],
)
def test_a_state_that_could_not_be_read_back_is_not_saved(
    tmp_path: Path, term: int, voted_for: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        save_lease_state(tmp_path, term, voted_for)
    assert list(tmp_path.iterdir()) == []


DAMAGED = [
    (b"", "the file is empty"),
    (b"  \n", "the file is empty"),
    (b'{"version": 1, "term": 3, "voted_', "not valid JSON, truncated or damaged"),
    (b"\xff\xfe{}", "not UTF-8 text"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'{"term": 3, "voted_for": null}', "missing version"),
    (b'{"version": 1}', "missing term, voted_for"),
    (b'{"version": 2, "term": 3, "voted_for": null}', "unknown version 2"),
    (b'{"version": "1", "term": 3, "voted_for": null}', "unknown version '1'"),
    (b'{"version": true, "term": 3, "voted_for": null}', "unknown version True"),
    (b'{"version": 1, "term": -1, "voted_for": null}', "term: expected 0 or more, got -1"),
    (b'{"version": 1, "term": "3", "voted_for": null}', "term: expected a whole number"),
    (b'{"version": 1, "term": 3.0, "voted_for": null}', "term: expected a whole number"),
    (b'{"version": 1, "term": true, "voted_for": null}', "term: expected a whole number"),
    (b'{"version": 1, "term": null, "voted_for": null}', "term: expected a whole number"),
    (b'{"version": 1, "term": 3, "voted_for": 7}', "voted_for: expected a node id or null"),
    (b'{"version": 1, "term": 3, "voted_for": ""}', "voted_for: expected a node id or null"),
    (b'{"version": 1, "term": 3, "voted_for": ["c1"]}', "voted_for: expected a node id"),
]


@pytest.mark.parametrize(("content", "problem"), DAMAGED)
def test_a_damaged_file_is_an_error_naming_it(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / LEASE_STATE_FILE
    path.write_bytes(content)
    with pytest.raises(LeaseStateError) as caught:
        load_lease_state(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {problem}"), message
    assert message.endswith(
        "; refusing to start over at term 0, which could give a second vote in a term "
        "this node already voted in"
    )
    assert path.read_bytes() == content  # left as it was, for the operator to look at


def test_an_unreadable_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / LEASE_STATE_FILE
    path.mkdir()  # reading a directory fails on every platform, even as root
    with pytest.raises(LeaseStateError, match=f"^{path}: cannot read it: "):
        load_lease_state(tmp_path)
