"""``python -m sim``: run seeds, print what happened, exit 1 on any violation.

Exit status: 0 when every seed held every invariant, 1 when any did not, 2 for bad flags
(argparse's own message, naming the flag). Each violation comes with the command that replays
it: the same flags, one seed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TextIO

from sim.config import DEFAULT_FAULTS, EVENTS_PER_NODE_SECOND, Fault, SimConfig, Unsafe
from sim.progress import Progress
from sim.report import banner, render, summarize
from sim.stats import SeedResult
from sim.world import run_seed

PROG = "python -m sim"
DEFAULTS = SimConfig()


def _faults(text: str) -> tuple[Fault, ...]:
    if text.strip() in ("", "none"):
        return ()
    chosen: set[Fault] = set()
    for name in text.split(","):
        try:
            chosen.add(Fault(name.strip()))
        except ValueError:
            known = ", ".join(Fault)
            raise argparse.ArgumentTypeError(
                f"unknown fault {name.strip()!r} (choose from {known}, or none)"
            ) from None
    return tuple(f for f in Fault if f in chosen)  # canonical order


def _timeout(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected MIN,MAX in seconds, e.g. 1.0,2.5; got {text!r}"
        ) from None
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"expected 0 < MIN <= MAX; got {text!r}")
    return low, high


def _number(
    kind: type[int] | type[float], low: float, high: float | None = None, *, open_high: bool = False
) -> Callable[[str], int | float]:
    """A parser for a number in [low, high] (or [low, high)), with a message saying so."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        above = high is not None and (value >= high if open_high else value > high)
        if not value >= low or above:  # also refuses nan
            limit = "" if high is None else f" and {'below' if open_high else 'at most'} {high:g}"
            raise argparse.ArgumentTypeError(f"expected at least {low:g}{limit}, got {text}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Deterministic simulation of the Brio lease, failure detector and "
        "scheduler: the real sans-io cores over a simulated network, clocks and database, "
        "with injected faults and the safety invariants checked after every event.",
        epilog=f"Faults: {', '.join(Fault)} (default: all but drift-beyond). "
        "Exit status: 0 no violation, 1 violations, 2 bad flags.",
    )
    runs = p.add_mutually_exclusive_group()
    runs.add_argument(
        "--seeds",
        type=_number(int, 1),
        default=100,
        metavar="N",
        help="run N seeds, from --first-seed on (default 100)",
    )
    runs.add_argument(
        "--seed",
        type=_number(int, 0),
        metavar="N",
        help="run the one seed N (to replay a violation)",
    )
    p.add_argument(
        "--first-seed",
        type=_number(int, 0),
        default=0,
        metavar="N",
        help="the first of --seeds (default 0)",
    )
    p.add_argument(
        "--nodes",
        type=_number(int, 2, 64),
        default=DEFAULTS.nodes,
        metavar="N",
        help=f"nodes, all of them voters (default {DEFAULTS.nodes})",
    )
    p.add_argument(
        "--coordinators",
        type=_number(int, 1),
        default=DEFAULTS.coordinators,
        metavar="N",
        help=f"how many of them are candidates (default {DEFAULTS.coordinators})",
    )
    p.add_argument(
        "--duration",
        type=_number(float, 1.0),
        default=DEFAULTS.duration,
        metavar="S",
        help="simulated seconds per seed, the fault-free heal window "
        f"at the end included (default {DEFAULTS.duration:g})",
    )
    p.add_argument(
        "--faults",
        type=_faults,
        default=DEFAULT_FAULTS,
        metavar="LIST",
        help="comma list of fault kinds, or none",
    )
    p.add_argument(
        "--lease-duration",
        type=_number(float, 0.3),
        metavar="S",
        default=DEFAULTS.lease_duration,
        help=f"default {DEFAULTS.lease_duration:g}",
    )
    p.add_argument(
        "--election-timeout",
        type=_timeout,
        metavar="MIN,MAX",
        default=DEFAULTS.election_timeout,
        help="default " + ",".join(f"{t:g}" for t in DEFAULTS.election_timeout),
    )
    p.add_argument(
        "--max-clock-drift",
        type=_number(float, 0.0, 0.5, open_high=True),
        metavar="F",
        default=DEFAULTS.max_clock_drift,
        help=f"default {DEFAULTS.max_clock_drift:g}",
    )
    p.add_argument(
        "--unsafe",
        action="append",
        choices=[str(u) for u in Unsafe],
        default=[],
        metavar="KNOB",
        help="TEST ONLY: switch one safety measure off (repeatable): " + ", ".join(Unsafe),
    )
    p.add_argument(
        "--max-events",
        type=_number(int, 1),
        metavar="N",
        help="stop a seed after N events and report it as an event-budget violation: a "
        f"livelock (default {EVENTS_PER_NODE_SECOND} per node and simulated second, "
        f"{DEFAULTS.event_budget:,} for the defaults, where a seed takes about 10,000)",
    )
    p.add_argument(
        "--task-rate",
        type=_number(float, 0.0, 1000.0),
        metavar="R",
        default=DEFAULTS.task_rate,
        help=f"tasks submitted per simulated second, 0 for none (default {DEFAULTS.task_rate:g})",
    )
    p.add_argument(
        "--task-capacity",
        type=_number(int, 1, 64),
        metavar="N",
        default=DEFAULTS.task_capacity,
        help=f"agent slots per node (default {DEFAULTS.task_capacity})",
    )
    p.add_argument(
        "--witness",
        action="store_true",
        help="the store votes too, as [mesh.lease] witness = 'store' (brio.core.witness); "
        "with faults, coordinators are also cut off from the store at times (store-cut)",
    )
    p.add_argument("--trace", action="store_true", help="print every seed's whole event trace")
    p.add_argument(
        "--json", action="store_true", help="print one JSON summary object instead of text"
    )
    p.add_argument(
        "--progress",
        action="store_true",
        help="show a progress bar on stderr even when it is not a terminal",
    )
    p.add_argument(
        "--jobs",
        type=_number(int, 1),
        metavar="N",
        help="worker processes (default: the CPU count; results do not depend on it)",
    )
    return p


def config_from(args: argparse.Namespace, p: argparse.ArgumentParser) -> SimConfig:
    if args.coordinators > args.nodes:
        p.error(f"argument --coordinators: {args.coordinators} is more than --nodes {args.nodes}")
    config = SimConfig(
        nodes=args.nodes,
        coordinators=args.coordinators,
        duration=args.duration,
        faults=args.faults,
        lease_duration=args.lease_duration,
        election_timeout=args.election_timeout,
        max_clock_drift=args.max_clock_drift,
        unsafe=frozenset(Unsafe(u) for u in args.unsafe),
        max_events=args.max_events,
        task_rate=args.task_rate,
        task_capacity=args.task_capacity,
        witness=args.witness,
    )
    if config.fault_end < 1.0:
        p.error(
            f"argument --duration: {args.duration:g} s is too short: the fault-free window "
            f"at the end alone is {config.heal_window:g} s (from --lease-duration, "
            f"--election-timeout and, with tasks, --task-capacity); "
            f"use at least {config.heal_window + 1:g}"
        )
    return config


def flags(config: SimConfig) -> list[str]:
    """The flags that rebuild ``config``: the ones that differ from the defaults."""
    out: list[str] = []
    if config.nodes != DEFAULTS.nodes:
        out += ["--nodes", str(config.nodes)]
    if config.coordinators != DEFAULTS.coordinators:
        out += ["--coordinators", str(config.coordinators)]
    if config.duration != DEFAULTS.duration:
        out += ["--duration", repr(config.duration)]
    if config.faults != DEFAULTS.faults:
        out += ["--faults", ",".join(config.faults) or "none"]
    if config.lease_duration != DEFAULTS.lease_duration:
        out += ["--lease-duration", repr(config.lease_duration)]
    if config.election_timeout != DEFAULTS.election_timeout:
        out += ["--election-timeout", ",".join(repr(t) for t in config.election_timeout)]
    if config.max_clock_drift != DEFAULTS.max_clock_drift:
        out += ["--max-clock-drift", repr(config.max_clock_drift)]
    if config.max_events is not None:
        out += ["--max-events", str(config.max_events)]
    if config.task_rate != DEFAULTS.task_rate:
        out += ["--task-rate", repr(config.task_rate)]
    if config.task_capacity != DEFAULTS.task_capacity:
        out += ["--task-capacity", str(config.task_capacity)]
    if config.witness:
        out.append("--witness")
    for knob in sorted(config.unsafe):
        out += ["--unsafe", str(knob)]
    return out


def replay_command(config: SimConfig, seed: int) -> str:
    return shlex.join([*PROG.split(), "--seed", str(seed), *flags(config)])


def _results(
    config: SimConfig, seeds: Sequence[int], keep_trace: bool, jobs: int
) -> Iterator[SeedResult]:
    """Results in seed order, whichever process ran them."""
    if jobs <= 1 or len(seeds) <= 1:
        for seed in seeds:
            yield run_seed(config, seed, keep_trace)
        return
    work = [(config, seed, keep_trace) for seed in seeds]
    chunk = max(1, min(20, len(seeds) // (jobs * 8)))
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        yield from pool.imap(_run_packed, work, chunksize=chunk)


def _run_packed(work: tuple[SimConfig, int, bool]) -> SeedResult:
    return run_seed(*work)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    config = config_from(args, p)
    if args.seed is not None:
        seeds: list[int] = [args.seed]
    else:
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    jobs = args.jobs or min(len(seeds), os.cpu_count() or 1)
    out = sys.stdout
    if config.unsafe and not args.json:
        print(banner(sorted(config.unsafe)), file=sys.stderr)
    progress = Progress(
        len(seeds), sys.stderr, enabled=args.progress or (len(seeds) > 1 and sys.stderr.isatty())
    )
    started = time.perf_counter()
    results: list[SeedResult] = []
    for result in _results(config, seeds, args.trace, jobs):
        results.append(result)
        progress.advance(result.violation is not None)
    wall = time.perf_counter() - started
    progress.close()
    summary = summarize(config, results, wall, lambda seed: replay_command(config, seed))
    if args.json:
        json.dump(summary, out, indent=2)
        out.write("\n")
    else:
        _print_traces(results, args.trace, out)
        print(render(summary), file=out)
    return 1 if summary["violations"] else 0


def _print_traces(results: list[SeedResult], whole: bool, out: TextIO) -> None:
    """Every trace with --trace; otherwise the tail of the first violating seed's."""
    if whole:
        for result in results:
            out.write(f"--- trace of seed {result.seed} ---\n")
            out.writelines(f"{line}\n" for line in result.trace)
        return
    failed = next((r for r in results if r.violation is not None), None)
    if failed is not None and failed.violation is not None:
        out.write(
            f"--- the last {len(failed.trace)} events of seed {failed.seed}, up to its "
            f"{failed.violation.invariant} violation ---\n"
        )
        out.writelines(f"{line}\n" for line in failed.trace)
        out.write("---\n")
