"""``brio serve``: load the config, run the node, stop in order on SIGINT/SIGTERM.

``brio.cli.main`` imports this module only to run ``brio serve``; the node itself
(``brio.node.root``) is imported when the node starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import trio

from brio.config.errors import ConfigError
from brio.config.load import load_config
from brio.exc import leaves
from brio.logs import setup_logging

log = logging.getLogger("brio.serve")


# After the orderly shutdown's own bounds (the grace period, then hypercorn's graceful timeout)
# a process that still has not ended is stuck, e.g. on a shielded write to a WebSocket client
# that stopped reading. Tasks are requeued by then; the process exits anyway, with status 1.
_STUCK_MARGIN = 15.0
_SECOND_SIGNAL_LIMIT = 5.0


def _exit_if_still_running(after: float, why: str) -> None:
    def force() -> None:
        log.error("%s; forcing exit", why)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(after, force)
    timer.daemon = True
    timer.start()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="config file (default: BRIO_CONFIG, ./brio.toml, ...)")


def run(args: argparse.Namespace) -> int:
    return serve(args.config)


async def _serve(config_path: str | None) -> None:
    from brio.node.root import run_node

    loaded = load_config(Path(config_path) if config_path else None)
    setup_logging(loaded.config.logging)
    log.info("config: %s", loaded.source or "defaults (no config file)")
    for note in loaded.config.not_in_effect():
        log.warning("config: %s", note)
    grace = loaded.config.server.shutdown_grace
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    if not shutdown.is_set():
                        log.info("%s received: shutting down", signal.Signals(signum).name)
                        shutdown.set()
                        limit = 2 * grace + _STUCK_MARGIN
                        _exit_if_still_running(limit, f"shutdown not done after {limit:g}s")
                    else:
                        log.warning("second signal: stopping now")
                        nursery.cancel_scope.cancel()
                        _exit_if_still_running(
                            _SECOND_SIGNAL_LIMIT,
                            f"not stopped {_SECOND_SIGNAL_LIMIT:g}s after the second signal",
                        )

        nursery.start_soon(watch_signals)
        await run_node(loaded.config, shutdown)
        nursery.cancel_scope.cancel()


def _expected() -> tuple[type[BaseException], ...]:
    """The failures an operator can cause, each told in one line. Imported when a start has
    failed: the mesh's and the store's modules are not otherwise needed by every node."""
    from brio.mesh.lease_state import LeaseStateError
    from brio.mesh.tls import TLSSetupError
    from brio.store.base import StoreError

    return (ConfigError, StoreError, OSError, TLSSetupError, LeaseStateError)


def _describe(exc: BaseException) -> str:
    from brio.store.base import StoreError

    if isinstance(exc, ConfigError):
        return f"invalid configuration:\n{exc}"
    if isinstance(exc, StoreError):
        return f"store: {exc}"
    return str(exc)


def serve(config_path: str | None) -> int:
    """Run a node; 0 after an orderly shutdown, 1 (with a one-line reason) if it cannot start."""
    try:
        trio.run(_serve, config_path, strict_exception_groups=True)
    except BaseException as exc:
        found = leaves(exc)
        expected = _expected()
        if not all(isinstance(leaf, expected) for leaf in found):
            raise
        for leaf in found:
            print(f"brio: {_describe(leaf)}", file=sys.stderr)
        return 1
    return 0
