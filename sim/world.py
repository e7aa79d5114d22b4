"""One seed's world: nodes, network, store and faults on one event loop, and its judge.

Everything random comes from streams derived from the seed by name (``f"{seed}/network"``,
``f"{seed}/c1/0/lease"``, ...; string seeds are hashed with SHA-512 by ``random``, never with
the per-process ``hash``), so the same seed replays the same trace byte for byte; and since
each concern has its own stream, a safety knob that changes the traffic leaves the seed's fault
schedule as it was.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial

from brio.core.lease import Role
from brio.core.membership import PeerState
from sim.chaos import Chaos
from sim.clock import Clock
from sim.config import SimConfig
from sim.faults import plan
from sim.invariants import Checker, Holder
from sim.loop import EventLoop
from sim.network import Network
from sim.node import STORE, SimNode, address
from sim.rpc import Calls
from sim.stats import Failovers, SeedResult
from sim.store import Answer, Store
from sim.trace import Trace
from sim.wire import FencedWrite, RaiseFence, Reply, Request, describe, is_lease

#: Clock offsets: nodes booted at different times, so their monotonic clocks read differently.
OFFSETS = (0.0, 10_000.0)


class World:
    def __init__(self, config: SimConfig, seed: int, *, keep_trace: bool = False) -> None:
        self.config = config
        self.seed = seed
        self.loop = EventLoop()
        self.checker = Checker()
        self.store = Store(config.knobs)
        self.failovers = Failovers()
        self._trace = Trace(keep_trace)
        self._keep_trace = keep_trace
        self.network = Network([*config.node_ids, STORE], self._stream("network"))
        clocks = self._stream("clocks")
        spread = config.rate_spread
        self.base_rates: dict[str, float] = {}
        self.nodes: dict[str, SimNode] = {}
        coordinators = set(config.node_ids[: config.coordinators])
        for name in config.node_ids:
            rate = clocks.uniform(1 - spread, 1 + spread)
            clock = Clock(clocks.uniform(*OFFSETS), rate)
            self.base_rates[name] = rate
            self.nodes[name] = SimNode(
                self, name, coordinator=name in coordinators, clock=clock, seed=seed
            )
        self.primaries: set[str] = set()  # nodes whose core says PRIMARY
        self.elections = 0
        self.events = 0
        self.healed_at: float | None = None
        self._primary_ok: float | None = None
        self._members_ok: float | None = None
        self._calls = Calls(self.loop, self.network, self._serve, self.note)
        self._pauses = 0
        self.chaos = Chaos(self, self._stream("faults"))

    def _stream(self, name: str) -> random.Random:
        return random.Random(f"{self.seed}/{name}")

    # ---------------------------------------------------------------- running

    def run(self) -> SeedResult:
        config = self.config
        for node in self.nodes.values():
            node.start()
        episodes = plan(
            self._stream("schedule"), config.faults, config.fault_end, config.lease_duration
        )
        self.loop.at(config.fault_end, self._heal)
        self.chaos.schedule(episodes)
        while self.checker.violation is None:
            item = self.loop.pop(config.duration)
            if item is None:
                break
            if self.events >= config.event_budget:
                self.checker.livelock(self.loop.now, self.events, config.duration)
                break
            target, action = item
            if target is not None and self.nodes[target].paused:
                self.nodes[target].held.append(action)
                continue
            action()
            self.events += 1
            self._after_event()
        violation = self.checker.violation
        shown = self._keep_trace or violation is not None
        trace = tuple(self._trace.lines()) if shown else ()
        return SeedResult(
            seed=self.seed,
            violation=violation,
            faults=dict(sorted(self.chaos.counts.items())),
            elections=self.elections,
            failovers=tuple(self.failovers.samples),
            writes=sum(1 for entry in self.store.log if entry.kind == "write"),
            events=self.events,
            simulated=self.loop.now if violation is not None else config.duration,
            primary_after_heal=self._primary_ok,
            members_after_heal=self._members_ok,
            trace=trace,
        )

    def _after_event(self) -> None:
        if len(self.primaries) >= 2:
            self.checker.primaries(self.loop.now, self._holders())
        if self.healed_at is not None and (self._primary_ok is None or self._members_ok is None):
            self._watch_liveness()

    def _holders(self) -> list[Holder]:
        holders = []
        for name in sorted(self.primaries):
            node = self.nodes[name]
            assert node.lease is not None
            until = node.lease.lease_until
            assert until is not None
            holders.append(Holder(name, node.lease.term, node.clock.true_at(until)))
        return holders

    def current_primary(self) -> SimNode | None:
        """The node with the newest unexpired lease, by its own clock."""
        now = self.loop.now
        valid = [h for h in self._holders() if h.until > now]
        if not valid:
            return None
        return self.nodes[max(valid, key=lambda h: (h.epoch, h.node)).node]

    # ---------------------------------------------------------------- liveness

    def _heal(self) -> None:
        self.healed_at = self.loop.now
        self.chaos.heal()
        self.loop.after(self.config.primary_bound, self._judge_primary)
        self.loop.after(self.config.membership_bound, self._judge_members)

    def _watch_liveness(self) -> None:
        assert self.healed_at is not None
        since = self.loop.now - self.healed_at
        nodes = self.nodes.values()
        if self._primary_ok is None and any(
            n.fenced and n.work_epoch is not None and n.working(n.work_epoch) for n in nodes
        ):
            self._primary_ok = since
        if self._members_ok is None and all(self._sees_all(n) for n in nodes):
            self._members_ok = since

    def _sees_all(self, node: SimNode) -> bool:
        table = node.membership
        if table is None:
            return False
        for peer in self.config.node_ids:
            if peer != node.name:
                row = table.get(address(peer))
                if row is None or row.state is not PeerState.HEALTHY:
                    return False
        return True

    def _judge_primary(self) -> None:
        if self._primary_ok is None:
            roles = ", ".join(
                f"{n.name} {n.lease.role} t{n.lease.term}" if n.lease else f"{n.name} down"
                for n in self.nodes.values()
            )
            self.checker.liveness(
                self.loop.now,
                "liveness-primary",
                f"no primary had raised the fence {self.config.primary_bound:.1f} s after the "
                f"faults healed ({roles})",
            )

    def _judge_members(self) -> None:
        if self._members_ok is None:
            blind = [n.name for n in self.nodes.values() if not self._sees_all(n)]
            self.checker.liveness(
                self.loop.now,
                "liveness-membership",
                f"{', '.join(blind)} did not see every other node healthy "
                f"{self.config.membership_bound:.1f} s after the faults healed",
            )

    # ---------------------------------------------------------------- calls

    def call(
        self,
        src: SimNode,
        dst: str,
        request: Request,
        *,
        timeout: float,
        on_reply: Callable[[Reply], None],
        on_timeout: Callable[[], None] | None = None,
    ) -> None:
        self._calls.call(
            src, dst, request, timeout=timeout, on_reply=on_reply, on_timeout=on_timeout
        )

    def _serve(self, sender: str, dst: str, request: Request) -> Reply | None:
        if dst == STORE:
            return self._store(sender, request)
        node = self.nodes[dst]
        if not node.up:
            if is_lease(request):
                self.note(dst, f"<- {sender} {describe(request)}: down")
            return None
        return node.handle(sender, request)

    def _store(self, sender: str, request: Request) -> Answer:
        now = self.loop.now
        logged = len(self.store.log)
        match request:
            case RaiseFence(epoch=epoch):
                answer = self.store.raise_fence(now, sender, epoch)
                what = f"raise to {epoch} by {sender}"
            case FencedWrite(epoch=epoch, seq=seq):
                answer = self.store.write(now, sender, epoch)
                what = f"write #{seq} by {sender} under epoch {epoch}"
            case _:
                raise AssertionError(f"the store got {request!r}")
        verdict = "accepted" if answer.ok else f"refused (fence at {answer.fence_epoch})"
        self.note(STORE, f"{what}: {verdict}")
        for entry in self.store.log[logged:]:
            self.checker.store_accepted(entry)
        return answer

    # ---------------------------------------------------------------- the node's host

    def note(self, who: str, text: str) -> None:
        self._trace.add(self.loop.now, who, text)

    def lease_changed(self, node: SimNode) -> None:
        if node.lease is not None and node.lease.role is Role.PRIMARY:
            self.primaries.add(node.name)
        else:
            self.primaries.discard(node.name)

    def voted(self, voter: str, term: int, candidate: str) -> None:
        self.checker.voted(self.loop.now, voter, term, candidate, disk=self.nodes[voter].disks)

    def became_primary(self, node: SimNode, epoch: int) -> None:
        self.elections += 1
        self.checker.became_primary(self.loop.now, node.name, epoch)
        self.failovers.became_primary(self.loop.now)

    def extended(self, node: SimNode, epoch: int, until: float) -> None:
        length = self.config.lease_duration
        if self.config.knobs.drift_margin:
            length *= 1 - self.config.max_clock_drift
        self.failovers.renewed(node.name, epoch, until - length)

    def lose_primary(self, node: SimNode) -> None:
        """A fault just took ``node`` away; if it held the lease, the failover clock starts."""
        lease = node.lease
        if node.name in self.primaries and lease is not None:
            until = lease.lease_until
            if until is not None and node.local() < until:
                self.failovers.lost(self.loop.now, node.name, lease.term, node.local())

    def pause(self, node: SimNode, duration: float) -> None:
        if not node.up or node.paused:
            return
        self.lose_primary(node)
        self._pauses += 1
        node.paused = True
        node.pause_token = self._pauses
        self.note(node.name, f"paused for {duration:.3f} s")
        self.loop.after(duration, partial(self.wake, node, node.pause_token))

    def wake(self, node: SimNode, token: int | None = None) -> None:
        """End ``node``'s pause (the one ``token`` started, or any); held events run now."""
        if not node.paused or token not in (None, node.pause_token):
            return
        node.paused = False
        held, node.held = node.held, []
        self.note(node.name, f"wakes up, {len(held)} events held")
        for action in held:
            self.loop.at(self.loop.now, action, node.name)


def run_seed(config: SimConfig, seed: int, keep_trace: bool = False) -> SeedResult:
    """One seed, start to finish (a top-level function, so worker processes can run it)."""
    return World(config, seed, keep_trace=keep_trace).run()
