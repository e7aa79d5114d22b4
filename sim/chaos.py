"""Carrying out a fault schedule: each episode's start does the damage, its end undoes it.

The choices an episode makes when it starts (whom to cut off, how lossy, which clock runs
slow) come from the seed's fault stream. The current primary is the favourite target: faults
that hit it are the ones that exercise failover and stale beliefs. At the heal, every fault
ends at once and the undo of an episode still running does nothing.

Some episodes are *aimed*: instead of striking at a random moment, they wait for a moment the
live state offers (``sending`` sees every call as it leaves) and strike then, at the races
the lease must win (docs/simulator.md, *Aimed faults*):

- *late answers*: a ``delay`` episode waits for the primary's next renewal round (or a
  candidate's election round), holds every answer to it until just inside the call's
  timeout, then cuts that node off: a lease timed from the answers instead of the round's
  start outlives the voters' promises, and a rival is elected into the gap.
- *held votes*: during a ``delay`` episode, a candidate's round of (pre-)vote requests is
  held on its way, for as long as it takes another candidate's election timer to fire if one
  is due soon (elections overlap), else for a random part of the call's timeout: its votes
  arrive after voters promised someone else, and a voter that ignores a promise is caught.
- *frozen between deciding and acting* (``pause``, below): a primary freezes right after
  deciding a write, or a batch of assignments, and sends it when it wakes.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from brio.core.lease import RenewRequest, Role, VoteRequest
from sim.config import Fault
from sim.faults import Episode
from sim.network import Impairment, Link
from sim.node import SimNode
from sim.wire import STORE, Request

if TYPE_CHECKING:
    from sim.world import World

Undo = Callable[[], None]

#: Aim ``delay`` episodes at the lease's races (tests switch it off to measure what it adds).
AIMED = True
#: Of the ``delay`` episodes: the share aimed as late answers, and as held votes.
LATE_ANSWERS = 1 / 3
HELD_VOTES = 1 / 3
#: Late answers arrive after this part of the call's timeout (before it ends: they count).
LATE = (0.88, 0.97)
#: How long the links stay slow: long enough for the round's requests to arrive and be answered.
LATE_WINDOW = 0.1
#: How long a node whose answers came late is then cut off, in lease durations.
CUT_AFTER_LATE = (1.0, 3.0)
#: After a rival's election timer fires, how long held vote requests wait more (seconds): time
#: for the rival's pre-vote and vote rounds, so that they arrive after it won.
RIVAL_WINS = (0.03, 0.3)
#: A held round of vote requests waits this part of the call's timeout (no rival due soon).
HELD = (0.1, 0.9)


class Chaos:
    def __init__(self, world: World, rng: random.Random) -> None:
        self._world = world
        self._rng = rng
        self.counts: Counter[str] = Counter()
        self._healed = False
        self._drifts: list[dict[str, float]] = []  # active clock-rate overrides, newest last
        self._late_armed = 0  # late-answer episodes waiting for a round to strike at
        self._holding = 0  # held-votes episodes running
        self._held: set[tuple[str, int]] = set()  # (candidate, round) already held

    def schedule(self, episodes: list[Episode]) -> None:
        for episode in episodes:
            self._world.loop.at(episode.start, partial(self._begin, episode))

    def _begin(self, episode: Episode) -> None:
        if self._healed:
            return
        self.counts[episode.kind] += 1
        undo = self._start(episode)
        self._world.loop.at(episode.end, partial(self._end, undo))

    def _end(self, undo: Undo) -> None:
        if not self._healed:
            undo()

    def heal(self) -> None:
        """Every fault ends: full connectivity, clocks within the bound, everyone up."""
        world = self._world
        self._healed = True
        self._late_armed = self._holding = 0
        world.note("chaos", "heal: every fault ends")
        world.network.heal()
        self._drifts.clear()
        self._set_rates()
        for node in world.nodes.values():
            node.pause_armed = None
            node.crash_armed = False
            if node.paused:
                world.wake(node)
            if not node.up:
                self._restart(node)

    # ---------------------------------------------------------------- choices

    def _names(self) -> list[str]:
        return list(self._world.config.node_ids)

    def _victim(self, prefer_primary: float = 1.0) -> SimNode:
        """The current primary (with this probability, if there is one), else anyone up."""
        world = self._world
        primary = world.current_primary()
        if primary is not None and self._rng.random() < prefer_primary:
            return primary
        up = [n for n in world.nodes.values() if n.up] or list(world.nodes.values())
        return self._rng.choice(up)

    def _split(self) -> tuple[list[str], list[str], list[str]]:
        """Two sides and, half the time, bridges: nodes that still reach both sides (a partial
        partition, where a node may hear a majority that the other side cannot)."""
        names = self._names()
        self._rng.shuffle(names)
        n = len(names)
        a = self._rng.randint(1, n - 1)
        b = self._rng.randint(1, n - a) if self._rng.random() < 0.5 else n - a
        return sorted(names[:a]), sorted(names[a : a + b]), sorted(names[a + b :])

    @staticmethod
    def _shown(a: list[str], b: list[str], bridges: list[str]) -> str:
        return f"{a} | {b}" + (f", bridged by {bridges}" if bridges else "")

    # ---------------------------------------------------------------- episodes

    def _start(self, episode: Episode) -> Undo:
        match episode.kind:
            case Fault.DELAY if AIMED:
                return self._aim_delay()
            case Fault.LOSS | Fault.DUP | Fault.REORDER | Fault.DELAY:
                return self._impair(episode.kind)
            case Fault.PARTITION:
                a, b, bridges = self._split()
                shown = self._shown(a, b, bridges)
                return self._cut(f"partition {shown}", _links(a, b) + _links(b, a))
            case Fault.ONEWAY:
                a, b, bridges = self._split()
                return self._cut(f"one-way cut {self._shown(a, b, bridges)}", _links(a, b))
            case Fault.ISOLATE:
                victim = self._victim()
                rest = [n for n in self._names() if n != victim.name]
                links = _links([victim.name], rest) + _links(rest, [victim.name])
                return self._cut(f"isolate {victim.name}", links)
            case Fault.DRIFT | Fault.DRIFT_BEYOND:
                return self._drift(episode.kind)
            case Fault.CRASH:
                return self._crash(self._victim(prefer_primary=0.5))
            case Fault.DISK_LOSS:
                return self._crash(self._victim(prefer_primary=0.5), lose_disk=True)
            case Fault.PAUSE:
                return self._pause(self._victim(prefer_primary=0.6), episode)
            case Fault.STOP:
                return self._stop(self._victim())

    # ---------------------------------------------------------------- aimed

    def _aim_delay(self) -> Undo:
        """A ``delay`` episode: aimed at late answers, at held votes, or a plain one."""
        draw = self._rng.random()
        if draw < LATE_ANSWERS:
            self._late_armed += 1
            self._world.note("chaos", "aimed: the next round's answers will come late")

            def disarm() -> None:
                self._late_armed = max(0, self._late_armed - 1)

            return disarm
        if draw < LATE_ANSWERS + HELD_VOTES:
            self._holding += 1
            self._world.note("chaos", "aimed: candidates' vote requests are held on their way")

            def stop() -> None:
                self._holding = max(0, self._holding - 1)
                self._world.note("chaos", "aimed: vote requests are no longer held")

            return stop
        return self._impair(Fault.DELAY)

    def sending(self, src: SimNode, request: Request) -> None:
        """A call leaves ``src`` now (before its request is on the wire): the moment an armed
        aim waits for. Called for every call, so it returns at once when nothing is armed."""
        if self._healed or not (self._late_armed or self._holding):
            return
        match request:
            case RenewRequest(round=round_id) | VoteRequest(pre_vote=False, round=round_id):
                if self._late_armed and src.lease is not None:
                    self._late_armed -= 1
                    self._late_answers(src, round_id)
                    return
            case _:
                pass
        if self._holding and isinstance(request, VoteRequest):
            key = (src.name, request.round)
            if key not in self._held:
                self._held.add(key)
                self._hold(src, request)

    def _late_answers(self, node: SimNode, round_id: int) -> None:
        """Every answer to ``node``'s round ``round_id`` comes just inside the call's timeout,
        and nothing ``node`` sends after this round arrives: only that round's answers can
        extend its lease, and the voters' promises run from when its requests arrived."""
        world, rng = self._world, self._rng
        timeout = world.config.rpc_timeout
        late = Impairment(
            frozenset({node.name}),
            delay=1.0,
            delay_min=LATE[0] * timeout,
            delay_max=LATE[1] * timeout,
        )
        self.counts["aimed: late answers"] += 1
        world.note(node.name, f"aimed: the answers to round {round_id} will come late")
        rest = [n for n in self._names() if n != node.name]
        length = rng.uniform(*CUT_AFTER_LATE) * world.config.lease_duration
        # This round's requests are on the wire by the end of this event; its answers leave
        # as the requests arrive (after at least the link's latency): slow the links then.
        world.loop.at(world.loop.now, partial(self._strike_late, node.name, late, length))
        world.loop.after(LATE_WINDOW, partial(self._restore_now, late))
        cut_at = LATE[1] * timeout + LATE_WINDOW
        world.loop.after(
            cut_at, partial(self._cut_for, node.name, _links(rest, [node.name]), length - cut_at)
        )

    def _strike_late(self, name: str, late: Impairment, length: float) -> None:
        if self._healed:
            return
        self._world.network.impair(late)
        rest = [n for n in self._names() if n != name]
        self._cut_for(name, _links([name], rest), length)

    def _restore_now(self, impairment: Impairment) -> None:
        if not self._healed:
            self._world.network.restore(impairment)

    def _cut_for(self, name: str, links: list[Link], length: float) -> None:
        if self._healed:
            return
        undo = self._cut(f"aimed: {name} cut off after its late answers", links)
        self._world.loop.after(length, partial(self._end, undo))

    def _hold(self, node: SimNode, request: VoteRequest) -> None:
        """Hold ``node``'s round of vote requests on its way: until another candidate's
        election timer fires, when one is due within the call's timeout, else a while."""
        world, rng = self._world, self._rng
        now, timeout = world.loop.now, world.config.rpc_timeout
        # Rivals whose timer fires within the call's timeout, behind this round's term: if one
        # wins meanwhile, these requests reach voters it holds promises of, in an older term.
        due = [
            other.clock.true_at(other.lease.next_deadline()) - now
            for other in world.nodes.values()
            if other is not node
            and other.up
            and other.coordinator
            and other.lease is not None
            and other.lease.role is not Role.PRIMARY
            and other.lease.term + 1 < request.term + int(request.pre_vote)
        ]
        soon = [d for d in due if 0 <= d < timeout]
        if soon:
            hold = min(soon) + rng.uniform(*RIVAL_WINS)
            what = "until a rival's election timer fires"
        else:
            hold = rng.uniform(*HELD) * timeout
            what = "a while"
        hold = min(hold, HELD[1] * timeout)  # the answers must still come within the timeout
        kind = "pre-vote" if request.pre_vote else "vote"
        self.counts["aimed: held votes"] += 1
        world.note(node.name, f"aimed: its {kind} requests r{request.round} held {what}")
        # This round's requests all leave in this event: delay them, and only them.
        held = Impairment(frozenset({node.name}), delay=1.0, delay_min=hold, delay_max=hold)
        world.network.impair(held)
        world.loop.at(now, partial(self._restore_now, held))

    def _impair(self, kind: Fault) -> Undo:
        rng, world = self._rng, self._world
        names = self._names()
        endpoints = set(rng.sample(names, rng.randint(1, len(names))))
        if rng.random() < 0.3:
            endpoints.add(STORE)
        touched = frozenset(endpoints)
        match kind:
            case Fault.LOSS:
                imp = Impairment(touched, loss=rng.uniform(0.05, 0.5))
                what = f"loss {imp.loss:.0%}"
            case Fault.DUP:
                imp = Impairment(touched, dup=rng.uniform(0.05, 0.3))
                what = f"duplication {imp.dup:.0%}"
            case Fault.REORDER:
                imp = Impairment(
                    touched, reorder=rng.uniform(0.2, 0.6), reorder_max=rng.uniform(0.02, 0.3)
                )
                what = f"reordering {imp.reorder:.0%} up to {imp.reorder_max * 1000:.0f} ms"
            case _:
                imp = Impairment(
                    touched,
                    delay=rng.uniform(0.1, 0.5),
                    delay_min=0.2,
                    delay_max=rng.uniform(0.5, 3.0),
                )
                what = f"long delays {imp.delay:.0%} of {imp.delay_min}-{imp.delay_max:.2f} s"
        world.note("chaos", f"{what} on links of {sorted(touched)}")
        world.network.impair(imp)

        def undo() -> None:
            world.network.restore(imp)
            world.note("chaos", f"{what} on links of {sorted(touched)} ends")

        return undo

    def _cut(self, what: str, links: list[Link]) -> Undo:
        """Cut ``links``; a primary left without a majority both ways counts as lost."""
        world = self._world
        world.note("chaos", what)
        world.network.cut(links)
        primary = world.current_primary()
        if primary is not None:
            net, me = world.network, primary.name
            both = [
                n
                for n in self._names()
                if n == me or (net.connected(me, n) and net.connected(n, me))
            ]
            if len(both) < len(world.nodes) // 2 + 1:
                world.lose_primary(primary)

        def undo() -> None:
            world.network.mend(links)
            world.note("chaos", f"{what}: mended")

        return undo

    def _drift(self, kind: Fault) -> Undo:
        world, rng = self._world, self._rng
        eps = world.config.max_clock_drift
        victim = self._victim().name
        if kind is Fault.DRIFT:
            spread = world.config.rate_spread  # at the very edge of the bound
        else:
            ratio = rng.uniform(1.25, 1.6) / (1 - eps)  # well past it
            spread = (ratio - 1) / (ratio + 1)
        if kind is Fault.DRIFT and rng.random() < 0.5:
            rates = {n: rng.choice((1 - spread, 1 + spread)) for n in self._names()}
        else:  # the worst case: the primary's clock slow, everyone else's fast
            rates = {n: 1 + spread for n in self._names()}
            rates[victim] = 1 - spread
        shown = ", ".join(f"{n} {r:.4f}" for n, r in rates.items())
        world.note("chaos", f"{kind}: clock rates {shown}")
        self._drifts.append(rates)
        self._set_rates()

        def undo() -> None:
            self._drifts.remove(rates)
            self._set_rates()
            world.note("chaos", f"{kind} ends")

        return undo

    def _set_rates(self) -> None:
        world = self._world
        rates = self._drifts[-1] if self._drifts else world.base_rates
        for name, node in world.nodes.items():
            if node.clock.rate != rates[name]:
                node.clock.set_rate(world.loop.now, rates[name])
                node.retime()

    def _crash(self, victim: SimNode, *, lose_disk: bool = False) -> Undo:
        world = self._world
        if not victim.up:
            return _nothing
        if world.config.tasks and victim.fenced and not lose_disk and self._rng.random() < 0.5:
            # Kill the primary mid-batch: right after its next assignment write leaves.
            victim.crash_armed = True
            world.note(victim.name, "will crash right after its next batch of assignments")

            def restart_or_disarm() -> None:
                victim.crash_armed = False
                if not victim.up:
                    self._restart(victim)

            return restart_or_disarm
        world.lose_primary(victim)
        victim.crash()
        world.forget_pending(victim)
        if lose_disk and self._may_lose_disk(victim):
            victim.lose_disk()
            world.note(victim.name, "crashes and loses its disk")
        elif lose_disk:
            world.note(victim.name, "crashes, keeping its disk (a majority would have no record)")
        else:
            world.note(victim.name, "crashes")

        def undo() -> None:
            if not victim.up:
                self._restart(victim)

        return undo

    def _stop(self, victim: SimNode) -> Undo:
        """A graceful stop (SIGTERM; the primary when there is one): the node hands the lease
        over and exits on its own a moment later; it starts again at the episode's end, or
        at once if it exits after that end (or the heal)."""
        world = self._world
        if not victim.up or victim.paused:
            return _nothing
        over = False  # the episode ended (or the heal came) before the node exited

        def exited() -> None:
            world.crash_now(victim, "stops (the rest of a graceful stop is as a crash)")
            if over or self._healed:
                self._restart(victim)

        victim.stop_gracefully(exited)

        def undo() -> None:
            nonlocal over
            over = True
            if not victim.up:
                self._restart(victim)

        return undo

    def _may_lose_disk(self, victim: SimNode) -> bool:
        """The fault model: fewer than a majority of the voters are without a record at any
        time. Beyond it no rule can be safe (a whole majority may have forgotten the term it
        elected), nor live (a node without a record needs the records of a majority)."""
        nodes = self._world.nodes.values()
        without = sum(1 for n in nodes if n.persisted is None and n is not victim)
        return without + 1 < len(self._world.nodes) // 2 + 1

    def _restart(self, node: SimNode) -> None:
        kept = node.persisted
        shown = f"term {kept.term}, vote {kept.voted_for}" if kept else "nothing"
        self._world.note(node.name, f"restarts with {shown} persisted")
        node.start()

    def _pause(self, victim: SimNode, episode: Episode) -> Undo:
        world = self._world
        duration = episode.end - episode.start
        if victim.fenced and self._rng.random() < 0.6:
            # Freeze it right between deciding to write and sending the write.
            victim.pause_armed = duration
            # With tasks, half of them between planning a batch of assignments and writing it.
            victim.pause_at_batch = world.config.tasks and self._rng.random() < 0.5
            what = "batch of assignments" if victim.pause_at_batch else "write"
            world.note(victim.name, f"will freeze for {duration:.3f} s at its next {what}")

            def disarm() -> None:
                victim.pause_armed = None

            return disarm
        world.pause(victim, duration)
        return _nothing


def _links(sources: list[str], targets: list[str]) -> list[Link]:
    return [(a, b) for a in sources for b in targets]


def _nothing() -> None:
    pass
