"""The bare web app baseline: hypercorn + quart-trio serving ``/health/ready`` and
``/health/live`` and nothing else, the stack ``brio serve`` is built on.

Run: ``python -m bench.baselines.bare_app HOST PORT``. Its ready time and idle RSS are what
Brio's own ``brio serve`` adds to (``bench/rows/serve.py``).
"""

from __future__ import annotations

import sys

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart_trio import QuartTrio


def make_app() -> QuartTrio:
    app = QuartTrio("bare")

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    trio.run(serve, make_app(), config)


if __name__ == "__main__":
    main()
