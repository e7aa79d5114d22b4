"""The node's directory on disk: one process at a time, and a node id that survives restarts.

Two processes on one data directory would each take the other's running tasks for leftovers
of a crash and requeue them, so the directory is locked (``flock``) for the node's lifetime.
When ``[mesh] node_id`` is not configured, the id defaults to the host name and is written to
``<data_dir>/node-id`` on first start: a container that comes back with a new host name but
the same volume is still the same node, and finds its unfinished tasks.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from brio.config.model import BrioConfig

LOCK_FILE = "brio.lock"
NODE_ID_FILE = "node-id"
#: Where a running node writes its bound mesh host:port, for ``brio mesh`` beside it.
MESH_ADDRESS_FILE = "mesh-address"


class DataDirBusy(OSError):
    """Another process holds the data directory."""


@contextmanager
def locked_data_dir(path: Path) -> Iterator[Path]:
    """Create ``path`` if needed and hold its lock until the block ends."""
    path.mkdir(parents=True, exist_ok=True)
    lock_path = path / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise DataDirBusy(
                f"data_dir {str(path)!r} is in use by another brio process (pid {holder}); "
                "give each node its own data_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def node_id(config: BrioConfig) -> str:
    """The configured node id, else the one remembered in the data dir, else the host name."""
    if "node_id" in config.mesh.model_fields_set:
        return config.mesh.node_id
    remembered = config.data_dir / NODE_ID_FILE
    try:
        text = remembered.read_text().strip()
    except FileNotFoundError:
        text = ""
    if text:
        return text
    tmp = remembered.with_suffix(".tmp")
    tmp.write_text(config.mesh.node_id + "\n")
    tmp.replace(remembered)
    return config.mesh.node_id
