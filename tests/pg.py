"""A throwaway PostgreSQL server for tests, started from the server binaries (initdb, pg_ctl).

Store tests use it through the fixtures in ``tests/conftest.py``; system tests that start real
node processes can use ``PostgresServer`` directly, as a context manager. The cluster lives in
a temporary directory, listens on a free port on 127.0.0.1, trusts every local connection and
runs with fsync off: fast, and gone when stopped.

``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` user (via
``runuser``) in a directory it owns; otherwise the binaries run directly.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_START_ATTEMPTS = 3  # a free port can be taken between finding it and binding it


class PostgresUnavailable(Exception):
    """The server binaries (or, as root, the ``postgres`` user) are missing."""


def find_bindir() -> Path:
    """The directory holding initdb and pg_ctl: from PATH, else Debian's newest install."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(initdb).resolve().parent
    installed = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if installed:
        return installed[-1].parent
    raise PostgresUnavailable("initdb is not on PATH (install the PostgreSQL server package)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory; ``start()``, ``create_database()``,
    ``stop()``. Connect as user ``postgres`` with no password."""

    host = "127.0.0.1"
    user = "postgres"

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir if bindir is not None else find_bindir()
        for tool in ("initdb", "pg_ctl"):
            if not (self.bindir / tool).exists():
                raise PostgresUnavailable(f"{tool} is missing from {self.bindir}")
        psql = self.bindir / "psql"
        found = str(psql) if psql.exists() else shutil.which("psql")
        if found is None:
            raise PostgresUnavailable("psql is not on PATH (install the PostgreSQL client)")
        self.psql: str = found
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root needs a 'postgres' user to run the server as"
                ) from None
        self.port: int | None = None
        self._dir: Path | None = None

    @property
    def data_dir(self) -> Path:
        if self._dir is None:
            raise RuntimeError("the PostgreSQL server is not started")
        return self._dir / "data"

    def url(self, database: str = "postgres") -> str:
        if self.port is None:
            raise RuntimeError("the PostgreSQL server is not started")
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def start(self) -> None:
        if self._dir is not None:
            raise RuntimeError("the PostgreSQL server is already started")
        self._dir = Path(tempfile.mkdtemp(prefix="brio-pg-"))
        try:
            if self.as_root:
                shutil.chown(self._dir, user="postgres", group="postgres")
            flags = ["--auth=trust", "-E", "UTF8", "--no-locale", "-N"]
            self._server_tool("initdb", "-D", self.data_dir, "-U", self.user, *flags)
            for attempt in range(1, _START_ATTEMPTS + 1):
                try:
                    self._start_on(_free_port())
                    return
                except RuntimeError:
                    if attempt == _START_ATTEMPTS:
                        raise
        except BaseException:
            self.stop()
            raise

    def _start_on(self, port: int) -> None:
        options = (
            f"-k {self._dir} -p {port} -c listen_addresses={self.host} -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        log = self.data_dir.parent / "server.log"
        self._server_tool("pg_ctl", "-D", self.data_dir, "-l", log, "-w", "start", "-o", options)
        self.port = port

    def stop(self) -> None:
        """Stop at once (no checkpoint: the data is thrown away) and remove the directory."""
        if self._dir is None:
            return
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._server_tool("pg_ctl", "-D", self.data_dir, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self.port = None

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        self._check_name(name)
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self._check_name(name)
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement with psql and return its unaligned output."""
        if self.port is None:
            raise RuntimeError("the PostgreSQL server is not started")
        connect = ["-h", self.host, "-p", str(self.port), "-U", self.user, "-d", database]
        done = subprocess.run(
            [self.psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", *connect, "-c", statement],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql {statement!r} failed: {done.stderr.strip()}")
        return done.stdout

    @staticmethod
    def _check_name(name: str) -> None:
        if not _DB_NAME.match(name):
            raise ValueError(f"not a plain database name: {name!r}")

    def _server_tool(self, tool: str, *args: str | Path) -> None:
        command = [str(self.bindir / tool), *map(str, args)]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        # cwd=/tmp: the postgres user may not be allowed into the current directory.
        done = subprocess.run(command, cwd="/tmp", capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({done.returncode}): {done.stderr.strip()}{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        log = None if self._dir is None else self._dir / "server.log"
        if log is None or not log.exists():
            return ""
        return "\nserver log:\n" + log.read_text(errors="replace")[-2000:]

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
