"""A seed's fault schedule: which episodes happen, when, and for how long.

Only the timing is planned up front, from the seed's fault stream; what an episode does (whom
it hits, how hard) is chosen when it starts, because the most telling target, the current
primary, is only known then. Durations are in units of the lease so that a run with other
timings still sees faults of the same relative size.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sim.config import Fault

#: How long an episode of each kind lasts, as (min, max) multiples of lease_duration.
DURATIONS: dict[Fault, tuple[float, float]] = {
    Fault.LOSS: (0.4, 3.0),
    Fault.DUP: (0.4, 3.0),
    Fault.REORDER: (0.4, 3.0),
    Fault.DELAY: (0.2, 2.0),
    Fault.PARTITION: (0.4, 4.0),
    Fault.ONEWAY: (0.4, 4.0),
    Fault.ISOLATE: (0.4, 3.0),
    Fault.DRIFT: (1.0, 6.0),
    Fault.DRIFT_BEYOND: (2.0, 8.0),
    Fault.CRASH: (0.1, 3.0),
    Fault.DISK_LOSS: (0.1, 3.0),
    Fault.PAUSE: (0.06, 2.4),
    Fault.STOP: (0.1, 3.0),  # until the restart
}

#: Half the crashes are quick restarts (a supervisor brings the process straight back), when
#: the restarted node's forgotten promises are still in force.
QUICK_RESTART = (0.04, 0.4)

#: Mean time between the starts of two episodes, in lease durations (a Poisson process).
MEAN_GAP = 1.2


@dataclass(frozen=True)
class Episode:
    kind: Fault
    start: float  # true time
    end: float


def plan(
    rng: random.Random, kinds: tuple[Fault, ...], fault_end: float, lease_duration: float
) -> list[Episode]:
    """Episodes from ``kinds`` over [0, fault_end); they may overlap, and all end by then."""
    episodes: list[Episode] = []
    if not kinds:
        return episodes
    rate = 1 / (MEAN_GAP * lease_duration)
    start = rng.expovariate(rate)
    while start < fault_end:
        kind = rng.choice(kinds)
        low, high = DURATIONS[kind]
        if kind in (Fault.CRASH, Fault.DISK_LOSS, Fault.STOP) and rng.random() < 0.5:
            low, high = QUICK_RESTART
        length = rng.uniform(low, high) * lease_duration
        episodes.append(Episode(kind, start, min(start + length, fault_end)))
        start += rng.expovariate(rate)
    return episodes
