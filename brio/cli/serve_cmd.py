"""``brio serve``: load the config, run the node, stop in order on SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import trio

from brio.config.errors import ConfigError
from brio.config.load import load_config
from brio.exc import leaves
from brio.logs import setup_logging
from brio.runtime.node import run_node
from brio.store.base import StoreError

log = logging.getLogger("brio.serve")


async def _serve(config_path: str | None) -> None:
    loaded = load_config(Path(config_path) if config_path else None)
    setup_logging(loaded.config.logging)
    log.info("config: %s", loaded.source or "defaults (no config file)")
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    if not shutdown.is_set():
                        log.info("%s received: shutting down", signal.Signals(signum).name)
                        shutdown.set()
                    else:
                        log.warning("second signal: stopping now")
                        nursery.cancel_scope.cancel()

        nursery.start_soon(watch_signals)
        await run_node(loaded.config, shutdown)
        nursery.cancel_scope.cancel()


_EXPECTED = (ConfigError, StoreError, OSError)


def _describe(exc: BaseException) -> str:
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
        if not all(isinstance(leaf, _EXPECTED) for leaf in found):
            raise
        for leaf in found:
            print(f"brio: {_describe(leaf)}", file=sys.stderr)
        return 1
    return 0
