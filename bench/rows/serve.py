"""Row ``serve``: what ``brio serve`` costs at rest and under many agents.

- Ready time: from ``Popen`` of the process to the first 200 of ``/health/ready`` (polled every
  5 ms), for ``python -m brio serve`` (one node, SQLite, no mesh) beside the bare hypercorn +
  quart-trio app (``bench/baselines/bare_app.py``), alternating, a new process each time.
- Idle RSS: the process's VmRSS 1 s after it was ready.
- Agents (Brio only, ``max_agents`` = ``AGENTS``): ``AGENTS`` ``sleep`` tasks of 60 s submitted
  over 8 connections while one loop GETs ``/health/live`` every 5 ms (``bench/suite_load.py``
  ``agents``); the added RSS (once every task is running, minus the RSS before the first
  submit) and the probe's p50 and p99 while submitting.
"""

from __future__ import annotations

import time
from typing import Any

from bench.ab import alternate, figure
from bench.rows.common import Run, Server, Settings, loadgen, log, rss_mb, start_bare, start_brio

AGENTS = 1000
SMOKE_AGENTS = 50
SLEEP_MS = 60_000
BRIO = "brio serve"
BARE = "bare hypercorn + quart-trio"


def _idle(server: Server) -> Run:
    time.sleep(1.0)
    return {"ready_s": server.ready_s, "idle_rss_mb": rss_mb(server.proc.pid)}


def _agents(server: Server, count: int, tag: str) -> Run:
    before = rss_mb(server.proc.pid)
    out = loadgen(
        "agents",
        {
            "url": server.url,
            "tag": tag,
            "count": count,
            "connections": 8,
            "ms": SLEEP_MS,
            "probe_gap": 0.005,
        },
    )
    after = rss_mb(server.proc.pid)
    out["rss_before_mb"] = before
    out["rss_after_mb"] = after
    out["added_rss_mb"] = after - before if after is not None and before is not None else None
    out["count"] = count
    return out


def run(settings: Settings) -> dict[str, Any]:
    count = SMOKE_AGENTS if settings.smoke else AGENTS

    def brio(rep: int) -> Run:
        # One process for both: it starts with room for the agents (max_agents does not
        # change what is allocated at rest), is measured idle, then loaded.
        server = start_brio(f"brio-{rep}", settings.tmp, max_agents=count)
        try:
            out = _idle(server)
            out["agents"] = a = _agents(server, count, f"agents-{rep}")
        finally:
            server.stop()
        log(
            f"serve brio rep {rep}: ready {out['ready_s']:.2f} s, idle {out['idle_rss_mb']:.1f} "
            f"MB; {count} agents +{a['added_rss_mb']:.1f} MB, /health/live p99 "
            f"{a['probe']['p99_ms']:.1f} ms, all running after {a['all_running_after_s']}"
        )
        return out

    def bare(rep: int) -> Run:
        server = start_bare(f"bare-{rep}", settings.tmp)
        try:
            out = _idle(server)
        finally:
            server.stop()
        log(f"serve bare rep {rep}: ready {out['ready_s']:.2f} s, idle {out['idle_rss_mb']:.1f} MB")
        return out

    done = alternate(settings.reps, {BRIO: brio, BARE: bare})
    agents = {BRIO: done.runs[BRIO]}
    return {
        "row": "serve",
        "title": "brio serve at rest, and with many sleep agents",
        "available": True,
        "figures": [
            figure("ready time", "s", "lower", done.runs, lambda r: r["ready_s"], baseline=BARE),
            figure("idle RSS", "MB", "lower", done.runs, lambda r: r["idle_rss_mb"], baseline=BARE),
            figure(
                f"{count} sleep agents: added RSS",
                "MB",
                "lower",
                agents,
                lambda r: r["agents"]["added_rss_mb"],
                baseline=None,
            ),
            figure(
                f"{count} sleep agents: /health/live p50 while submitting",
                "ms",
                "lower",
                agents,
                lambda r: r["agents"]["probe"]["p50_ms"],
                baseline=None,
            ),
            figure(
                f"{count} sleep agents: /health/live p99 while submitting",
                "ms",
                "lower",
                agents,
                lambda r: r["agents"]["probe"]["p99_ms"],
                baseline=None,
            ),
            figure(
                f"{count} sleep agents: submit time",
                "s",
                "lower",
                agents,
                lambda r: r["agents"]["submit_s"],
                baseline=None,
            ),
        ],
        "notes": [],
        "order": done.order,
        "runs": done.runs,
    }
