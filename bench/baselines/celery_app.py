"""The Celery baseline: one no-op ``echo`` task on Redis (broker and result backend).

The worker runs as ``celery -A bench.baselines.celery_app worker --pool prefork
--concurrency 2`` with ``BENCH_REDIS_URL`` set; the load generator (``bench/suite_load.py``)
builds the same app with ``make_app``. Settings, chosen to match what Brio promises:

- ``task_acks_late``: a task is acknowledged after it ran, so a worker killed mid-task does not
  lose it (Brio requeues a task whose node died);
- ``worker_prefetch_multiplier = 1``: each prefork child reserves one task at a time;
- Redis itself is started by the suite with ``appendonly yes`` and ``appendfsync always``:
  every write is fsynced before Redis answers, as Brio's store commits before its 202.

Celery is imported by name (``importlib``) so that mypy checks this file without the
``bench`` extra installed.
"""

from __future__ import annotations

import importlib
import os
from typing import Any


def echo(prompt: str) -> str:
    """The no-op task: its result is its argument."""
    return prompt


def make_app(redis_url: str) -> Any:
    celery = importlib.import_module("celery")
    app = celery.Celery("bench", broker=redis_url, backend=redis_url)
    app.conf.update(
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    app.task(name="bench.echo")(echo)
    return app


app = make_app(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
