"""What a node answers on its mesh port: ``Mesh`` (Call, Heartbeat) and ``MeshAdmin``.

Handlers are trio functions ``(request, caller, timeout) -> response``; ``transport.Service``
adapts them to grpclib. A bad request is answered with a typed ``MeshError`` (Call) or a gRPC
status naming the field at fault (admin); nothing a caller sends can raise past here.

``Call`` methods:

| method         | payload (JSON)                    | answer (JSON)            |
|----------------|-----------------------------------|--------------------------|
| `agent.invoke` | `{"prompt": str, "input": {...}}` | `{"result": ...}`        |
| `task.run`     | `{"task_ids": [str]}` (or `task_id`) | `{"accepted": true}`  |
| `task.queued`  | `{}` (from a coordinator)         | `{"woken": bool}`        |
| `task.cancel`  | `{"task_id": str}`                | `{"stopped": bool}`      |
| `task.events`  | `{"events": [...]}`               | `{"published": n}`       |
| `node.goodbye` | `{"started_unix_ms": int}` (from a peer that leaves) | `{"dropped": true}` |

``MeshAdmin`` ``Drain``, ``Leave`` and ``Remove`` are ``brio mesh drain``, ``leave`` and
``remove`` (docs/mesh.md, "Taking nodes out"): a drain sets the node's ``draining`` flag (its
heartbeats carry it; the primary places nothing more there); a leave finishes the node's
tasks, says ``node.goodbye`` to every peer and stops the node; a remove marks another node
departed on this coordinator and on the primary, whose placer requeues its tasks at once.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from brio import __version__
from brio.core import lease as core_lease
from brio.core.membership import Peer
from brio.core.routing import Local, Route, RouteError
from brio.mesh import methods, pb
from brio.mesh.assembly import Mesh
from brio.mesh.directory import DOWN, Departure
from brio.mesh.lease import (
    renew_reply_pb,
    renew_request_from,
    vote_reply_pb,
    vote_request_from,
)
from brio.mesh.transport import Caller, MeshCallError, Service
from brio.store.base import NodeRecord
from brio.tasks.supervisor import Busy

log = logging.getLogger(__name__)

Code = pb.MeshErrorCode


def _error(mesh: Mesh, code: pb.MeshErrorCode, message: str) -> pb.MeshResponse:
    return pb.MeshResponse(error=pb.MeshError(code=code, message=message), node_id=mesh.node_id)


def _ok(mesh: Mesh, value: Any) -> pb.MeshResponse:
    return pb.MeshResponse(json=json.dumps(value), node_id=mesh.node_id)


def _payload(request: pb.MeshRequest) -> dict[str, Any]:
    if not request.is_set("json"):
        raise ValueError("payload: expected a JSON object in the 'json' field")
    try:
        value = json.loads(request.json or "")
    except ValueError as exc:
        raise ValueError(f"payload: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"payload: expected a JSON object, got {type(value).__name__}")
    return value


def _string(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"payload.{key}: expected a non-empty string")
    return value


def _budget(request: pb.MeshRequest, timeout: float | None) -> float:
    """Seconds left: the tighter of the transport deadline and the request's own."""
    left = timeout if timeout is not None else math.inf
    if request.deadline_unix_ms:
        left = min(left, request.deadline_unix_ms / 1000 - time.time())
    return left


#: The longest a leaving node waits for one peer to take its goodbye.
GOODBYE_TIMEOUT = 5.0


class MeshHandlers:
    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self._leaving = False

    def services(self) -> list[Service]:
        max_bytes = self.mesh.config.mesh.max_message_bytes
        stats = self.mesh.stats
        mesh = Service(
            {
                methods.CALL: self.call,
                methods.HEARTBEAT: self.heartbeat,
                methods.VOTE: self.vote,
                methods.RENEW: self.renew,
            },
            max_bytes,
            stats,
        )
        admin = Service(
            {
                methods.STATUS: self.status,
                methods.PING: self.ping,
                methods.TOPOLOGY: self.topology,
                methods.STATS: self.stats,
                methods.DRAIN: self.drain,
                methods.LEAVE: self.leave,
                methods.REMOVE: self.remove,
            },
            max_bytes,
            stats,
        )
        return [mesh, admin]

    # --- Mesh ----------------------------------------------------------------------------

    async def heartbeat(
        self, request: pb.HeartbeatRequest, caller: Caller, timeout: float | None
    ) -> pb.HeartbeatResponse:
        sender = request.sender
        if sender is None or not sender.node_id:
            raise GRPCError(Status.INVALID_ARGUMENT, "sender.node_id: required")
        if sender.role not in ("coordinator", "worker"):
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"sender.role: expected 'coordinator' or 'worker', got {sender.role!r}",
            )
        if caller.cert_node_id is not None and caller.cert_node_id != sender.node_id:
            raise GRPCError(
                Status.PERMISSION_DENIED,
                f"the certificate is for {caller.cert_node_id!r} but the heartbeat says "
                f"it is from {sender.node_id!r}",
            )
        if sender.node_id != self.mesh.node_id:
            directory = self.mesh.directory
            gone = directory.departed.get(sender.node_id)
            if directory.readmit(sender.node_id, sender.started_unix_ms):
                if gone is not None:
                    log.warning(
                        "node %s is back (a new process) after it %s; it rejoins",
                        sender.node_id,
                        "left" if gone.how == "left" else "was removed",
                    )
                self.mesh.peers.heartbeat_received(sender)
            # else: the process that left or was removed; answered, never taken back in
        return pb.HeartbeatResponse(responder=self.mesh.local.info())

    async def vote(
        self, request: pb.LeaseVoteRequest, caller: Caller, timeout: float | None
    ) -> pb.LeaseVoteReply:
        message = vote_request_from(request)
        reply = self._lease(message.candidate, "candidate", caller, message)
        assert isinstance(reply, core_lease.VoteReply)
        return vote_reply_pb(reply)

    async def renew(
        self, request: pb.LeaseRenewRequest, caller: Caller, timeout: float | None
    ) -> pb.LeaseRenewReply:
        message = renew_request_from(request)
        reply = self._lease(message.leader, "leader", caller, message)
        if reply is None:  # a standby that does not vote listens without answering
            return pb.LeaseRenewReply(term=message.term, ok=False, reason="not a voter")
        assert isinstance(reply, core_lease.RenewReply)
        return renew_reply_pb(reply)

    def _lease(
        self,
        sender: str,
        field: str,
        caller: Caller,
        message: core_lease.VoteRequest | core_lease.RenewRequest | core_lease.Release,
    ) -> core_lease.Message | None:
        """Hand a lease request to the driver once its sender is checked: a configured
        candidate, the one the certificate names (mTLS) and the caller's own name, with a
        term in bounds. Anything else is refused and logged as a forgery (DESIGN.md §3)."""
        if not sender:
            raise GRPCError(Status.INVALID_ARGUMENT, f"{field}: required")
        refusal: tuple[Status, str] | None = None
        if caller.cert_node_id is not None and caller.cert_node_id != sender:
            refusal = (
                Status.PERMISSION_DENIED,
                f"the certificate is for {caller.cert_node_id!r} but the {field} is {sender!r}",
            )
        lease = self.mesh.lease
        if lease is None:
            if refusal is not None:
                raise GRPCError(*refusal)
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                f"{self.mesh.node_id} takes no part in the lease (not a voter or coordinator)",
            )
        kind = type(message).__name__
        where = f"{caller.address[0]}" if caller.address else "an unknown address"
        if refusal is not None or lease.core is None:  # not running: nothing is acted on
            pass
        elif caller.claimed_node_id is not None and caller.node_id != sender:
            refusal = (
                Status.PERMISSION_DENIED,
                f"the caller names itself {caller.node_id!r} but the {field} is {sender!r}",
            )
        elif not (
            lease.may_send(sender, message)
            # a voter not in [[mesh.peers]], whose heartbeats (authenticated with mTLS or the
            # secret) say it is a coordinator; a role written in [[mesh.peers]] wins
            or (sender in lease.voters and self.mesh.peers.is_coordinator(sender))
        ):
            known = ", ".join(sorted(lease.candidates)) or "none"
            refusal = (
                Status.PERMISSION_DENIED,
                f"{sender!r} is not a configured candidate (coordinators: {known})",
            )
        elif (bound := lease.term_refusal(message)) is not None:
            refusal = (Status.INVALID_ARGUMENT, bound)
        if refusal is not None:
            lease.log_refusal(kind, sender, where, refusal[1])
            raise GRPCError(*refusal)
        reply = lease.handle(sender, message)
        if reply is None and isinstance(message, core_lease.VoteRequest):
            raise GRPCError(Status.UNAVAILABLE, "the lease is not running yet")
        return reply

    async def call(
        self, request: pb.MeshRequest, caller: Caller, timeout: float | None
    ) -> pb.MeshResponse:
        mesh = self.mesh
        budget = _budget(request, timeout)
        if budget <= 0:
            return _error(mesh, Code.DEADLINE_EXCEEDED, "the request's deadline has passed")
        with trio.move_on_after(budget) as scope:
            try:
                return await self._call(request, caller, budget)
            except ValueError as exc:
                return _error(mesh, Code.BAD_REQUEST, str(exc))
            except Busy as exc:
                return _error(mesh, Code.UNAVAILABLE, str(exc))
            except MeshCallError as exc:
                return _error(mesh, Code.UNAVAILABLE, str(exc))
            except Exception as exc:
                log.exception("mesh call %s on %s failed", request.method, request.target)
                return _error(mesh, Code.INTERNAL, f"{type(exc).__name__}: {exc}")
        assert scope.cancelled_caught
        return _error(mesh, Code.DEADLINE_EXCEEDED, f"no answer within {budget:.3g}s")

    async def _call(
        self, request: pb.MeshRequest, caller: Caller, budget: float
    ) -> pb.MeshResponse:
        mesh = self.mesh
        method = request.method
        if method == "task.events":
            origin = caller.node_id
            if origin is None or mesh.membership.by_node_id(origin) is None:
                return _error(
                    mesh, Code.PERMISSION_DENIED, "task events are taken only from mesh peers"
                )
            events = _payload(request).get("events")
            if not isinstance(events, list) or not all(
                isinstance(e, dict) and isinstance(e.get("type"), str) and e.get("task_id")
                for e in events
            ):
                raise ValueError("payload.events: expected a list of {type, task_id, data}")
            return _ok(mesh, {"published": mesh.forwarder.publish_remote(origin, events)})
        if method == "node.goodbye":
            return self._goodbye_received(caller, _payload(request))
        if method == "task.queued":
            # a coordinator took a task: if we are the primary, place it now
            if not mesh.peers.is_coordinator(caller.node_id):
                return _error(
                    mesh, Code.PERMISSION_DENIED, "task.queued is taken only from coordinators"
                )
            woken = mesh.placer is not None and mesh.lease_view().role == "primary"
            if woken and mesh.placer is not None:
                mesh.placer.wake()
            return _ok(mesh, {"woken": woken})
        if method not in ("agent.invoke", "task.run", "task.cancel"):
            raise ValueError(
                f"method: unknown {method!r}; expected agent.invoke, task.run, task.cancel, "
                "task.events, task.queued or node.goodbye"
            )
        if method == "task.run" and not request.target:
            # the primary's notice of a batch (of any agents) assigned to this node
            where: Route = Local("")
        else:
            try:
                where = mesh.router.route(request.target)
            except RouteError as exc:
                return _error(mesh, Code.UNKNOWN_NODE, str(exc))
        if not isinstance(where, Local):
            # One hop at most: the forwarded request names the agent alone, so the next
            # node runs it or refuses it.
            if method != "agent.invoke":
                return _error(
                    mesh,
                    Code.UNKNOWN_NODE,
                    f"target {request.target!r} is not on this node ({mesh.node_id})",
                )
            timeout = min(budget, mesh.config.mesh.call_timeout)  # every call has a deadline
            return await mesh.calls.call_node(
                where.node_id, method, where.agent, _payload(request), timeout=timeout
            )
        agent = where.agent
        if agent not in mesh.local.agents and method == "agent.invoke":
            known = ", ".join(sorted(mesh.local.agents)) or "none"
            return _error(
                mesh,
                Code.UNKNOWN_AGENT,
                f"unknown agent {agent!r} on {mesh.node_id}; known agents: {known}",
            )
        payload = _payload(request)
        if method == "agent.invoke":
            prompt = payload.get("prompt", "")
            input_ = payload.get("input") or {}
            if not isinstance(prompt, str):
                raise ValueError("payload.prompt: expected a string")
            if not isinstance(input_, dict):
                raise ValueError("payload.input: expected a JSON object")
            try:
                result = await mesh.supervisor.invoke(agent, prompt, input_)
            except Busy:
                raise
            except Exception as exc:
                return _error(mesh, Code.AGENT_FAILED, f"{type(exc).__name__}: {exc}")
            return _ok(mesh, {"result": result})
        if method == "task.run":  # work was assigned to us: claim it now
            ids = payload.get("task_ids")
            if ids is None:
                task_id = _string(payload, "task_id")
                mesh.supervisor.wake()
                return _ok(mesh, {"accepted": True, "task_id": task_id})
            if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
                raise ValueError("payload.task_ids: expected a list of non-empty strings")
            mesh.supervisor.wake()
            return _ok(mesh, {"accepted": True, "tasks": len(ids)})
        task_id = _string(payload, "task_id")
        return _ok(mesh, {"stopped": mesh.supervisor.cancel_local(task_id), "task_id": task_id})

    # --- MeshAdmin -----------------------------------------------------------------------

    def _peer(self, node_id: str) -> Peer:
        peer = self.mesh.membership.by_node_id(node_id)
        if peer is None:
            known = self.mesh.peers.known_ids()
            raise GRPCError(
                Status.NOT_FOUND, f"unknown node {node_id!r}; known nodes: {', '.join(known)}"
            )
        return peer

    async def status(
        self, request: pb.StatusRequest, caller: Caller, timeout: float | None
    ) -> pb.StatusResponse:
        mesh = self.mesh
        lease = mesh.lease.status_pb() if mesh.lease is not None else None
        if not request.node_id:
            return pb.StatusResponse(
                node=mesh.local.info(),
                peers=[self._row(p) for p in mesh.membership.peers()],
                lease=lease,
            )
        if request.node_id == mesh.node_id:
            return pb.StatusResponse(node=mesh.local.info(), peers=[], lease=lease)
        peer = self._peer(request.node_id)
        row = self._row(peer)
        info = pb.NodeInfo(node_id=row.node_id, role=row.role, address=row.address)
        remote_lease = None
        try:
            remote = await mesh.calls.call(request.node_id, methods.STATUS, pb.StatusRequest())
            if remote.node is not None:
                info = remote.node
            remote_lease = remote.lease
        except (MeshCallError, LookupError) as exc:
            log.info("status of %s: its own view is unavailable: %s", request.node_id, exc)
        return pb.StatusResponse(node=info, peers=[row], lease=remote_lease)

    async def ping(
        self, request: pb.PingRequest, caller: Caller, timeout: float | None
    ) -> pb.PingResponse:
        if not request.node_id:
            raise GRPCError(Status.INVALID_ARGUMENT, "node_id: required")
        self._peer(request.node_id)
        count = request.count or 4
        if count > 100:
            raise GRPCError(Status.INVALID_ARGUMENT, f"count: at most 100, got {count}")
        address, rtts, lost = await self.mesh.peers.ping(request.node_id, count)
        return pb.PingResponse(node_id=request.node_id, address=address, rtt_ms=rtts, lost=lost)

    async def topology(
        self, request: pb.TopologyRequest, caller: Caller, timeout: float | None
    ) -> pb.TopologyResponse:
        mesh = self.mesh
        nodes = [mesh.local.info()]
        edges: list[pb.Edge] = []
        unreachable: list[str] = []
        for peer in mesh.membership.peers():
            edges.append(
                pb.Edge(
                    from_node=mesh.node_id,
                    to_node=peer.node_id or peer.address,
                    status=str(peer.state),
                    latency_ms=(peer.latency or 0) * 1000,
                )
            )

        async def fetch(node_id: str) -> None:
            try:
                with trio.fail_after(min(5.0, mesh.config.mesh.call_timeout)):
                    view = await mesh.calls.call(node_id, methods.STATUS, pb.StatusRequest())
            except (MeshCallError, LookupError, trio.TooSlowError):
                unreachable.append(node_id)
                return
            if view.node is not None:
                nodes.append(view.node)
            for row in view.peers:
                edges.append(
                    pb.Edge(
                        from_node=node_id,
                        to_node=row.node_id or row.address,
                        status=row.status,
                        latency_ms=row.latency_ms,
                    )
                )

        async with trio.open_nursery() as nursery:
            for peer in mesh.membership.peers():
                if peer.node_id is not None:
                    nursery.start_soon(fetch, peer.node_id)
        nodes.sort(key=lambda n: n.node_id)
        edges.sort(key=lambda e: (e.from_node, e.to_node))
        return pb.TopologyResponse(nodes=nodes, edges=edges, unreachable=sorted(unreachable))

    async def stats(
        self, request: pb.StatsRequest, caller: Caller, timeout: float | None
    ) -> pb.StatsResponse:
        mesh = self.mesh
        if request.node_id and request.node_id != mesh.node_id:
            self._peer(request.node_id)
            try:
                reply: pb.StatsResponse = await mesh.calls.call(
                    request.node_id, methods.STATS, pb.StatsRequest()
                )
            except MeshCallError as exc:
                raise GRPCError(Status.UNAVAILABLE, str(exc)) from None
            return reply
        counts = mesh.forwarder.counts
        info = mesh.local.info()
        s = mesh.stats
        return pb.StatsResponse(
            node_id=mesh.node_id,
            role=mesh.local.role,
            workload=info.workload,
            uptime_seconds=mesh.local.uptime(),
            tasks_succeeded=counts.succeeded,
            tasks_failed=counts.failed,
            tasks_cancelled=counts.cancelled,
            calls_received=s.calls_received,
            calls_sent=s.calls_sent,
            call_errors=s.call_errors,
            heartbeats_received=mesh.peers.heartbeats_received,
            bytes_received=s.bytes_received,
            bytes_sent=s.bytes_sent,
            agents=sorted(mesh.local.agents),
            refused_connections=s.refused_connections,
            oversized_requests=s.oversized_requests,
            malformed_requests=s.malformed_requests,
            tasks_run=mesh.meter.run_count,
            tasks_running=mesh.supervisor.active,
            mean_task_ms=mesh.meter.mean_seconds * 1000,
        )

    def _authorize_action(self, request: pb.NodeRequest, caller: Caller, action: str) -> str:
        mesh = self.mesh
        target = request.node_id or mesh.node_id
        if mesh.config.mesh.authenticated and caller.cert_node_id is None and not caller.signed:
            # the transport refuses these already; a claimed id alone never authorizes
            raise GRPCError(
                Status.UNAUTHENTICATED,
                f"{action} needs a caller proven by its certificate or the cluster secret",
            )
        on_self = target == mesh.node_id and caller.node_id == mesh.node_id
        if not on_self and not mesh.peers.is_coordinator(caller.node_id):
            who = caller.node_id or "an unidentified caller"
            raise GRPCError(
                Status.PERMISSION_DENIED,
                f"{action} of {target!r} is accepted only from coordinators; {who} is not one",
            )
        return target

    async def drain(
        self, request: pb.NodeRequest, caller: Caller, timeout: float | None
    ) -> pb.ActionResponse:
        """Place nothing more on the node; what runs there (or was assigned) finishes. Of
        another node: forwarded to it (it answers, and records it, itself)."""
        mesh = self.mesh
        target = self._authorize_action(request, caller, "drain")
        if target != mesh.node_id:
            self._peer(target)
            return await self._forward(target, methods.DRAIN, pb.NodeRequest(node_id=target))
        already = mesh.local.draining
        mesh.local.draining = True
        handed = None
        if mesh.lease is not None:  # a drained coordinator hands the lease over, if it has it
            handed = await mesh.lease.transfer()
        running = mesh.supervisor.active
        if not already:
            log.warning("draining (asked by %s): no new tasks; %d running", caller.node_id, running)
        stored = await self._record(mesh.node_id, mesh.local.role, mesh.local.address, "draining")
        state = "was already draining" if already else "is draining"
        message = (
            f"{target} {state}: no new tasks are placed on it; {running} running task(s) "
            f"finish there{stored}"
        )
        if handed is not None:
            message += f"; the coordinator lease: {handed}"
        return pb.ActionResponse(node_id=target, message=message, running=running)

    async def leave(
        self, request: pb.NodeRequest, caller: Caller, timeout: float | None
    ) -> pb.ActionResponse:
        """This node leaves: its running tasks finish (``shutdown_grace``; the rest go back to
        the queue), its last events go out, every peer is told goodbye, then the node stops.
        Without ``force`` it must be draining already."""
        mesh = self.mesh
        target = self._authorize_action(request, caller, "leave")
        if target != mesh.node_id:
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"leave acts on the node it is asked of: run `brio mesh leave` beside {target} "
                f"(this is {mesh.node_id}); to take {target} out from here, "
                f"`brio mesh remove {target} --force`",
            )
        if self._leaving:
            raise GRPCError(Status.FAILED_PRECONDITION, f"{target} is already leaving")
        if not mesh.local.draining and not request.force:
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                f"{target} is not draining: run `brio mesh drain` first and wait for its "
                f"running tasks (active_agents 0 in `brio mesh status {target}`), or "
                "`brio mesh leave --force` to drain and leave now",
            )
        self._leaving = True
        grace = mesh.config.server.shutdown_grace
        running = mesh.supervisor.active
        log.warning(
            "leaving the mesh (asked by %s): %d running task(s) get %gs",
            caller.node_id,
            running,
            grace,
        )
        with trio.CancelScope(shield=True):  # once begun, a leave ends (bounded in time)
            mesh.local.draining = True
            await mesh.supervisor.drain(grace)
            await mesh.forwarder.flush(timeout=2.0)
            told, missed = await self._say_goodbye()
            await self._record(mesh.node_id, mesh.local.role, mesh.local.address, "left")
            mesh.leave_requested.set()
        parts = [f"{target} left the mesh"]
        if running:
            parts.append(f"{running} running task(s) had up to {grace:g}s to finish")
        parts.append(f"goodbye said to {', '.join(told) or 'no peer'}")
        if missed:
            parts.append(f"not heard by {', '.join(missed)}")
        parts.append("the node stops now")
        return pb.ActionResponse(node_id=target, message="; ".join(parts), running=running)

    async def remove(
        self, request: pb.NodeRequest, caller: Caller, timeout: float | None
    ) -> pb.ActionResponse:
        """Take another node out at once (``force`` required): it gets no more work, and its
        assigned and running tasks go back to the queue now. Asked of a coordinator that is
        not the primary, the primary is told too: its placer moves the tasks."""
        mesh = self.mesh
        if not request.node_id:
            raise GRPCError(
                Status.INVALID_ARGUMENT, "node_id: required (brio mesh remove NODE --force)"
            )
        target = self._authorize_action(request, caller, "remove")
        if target == mesh.node_id:
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                f"{target} cannot remove itself: `brio mesh drain` it and run "
                "`brio mesh leave` on it, or remove it from another coordinator",
            )
        already = mesh.directory.departed.get(target)
        peer = mesh.membership.by_node_id(target)
        if peer is None and already is None:
            self._peer(target)  # NOT_FOUND, naming the known nodes
        if not request.force:
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                f"remove takes {target} out at once and moves its tasks to other nodes: "
                f"pass --force. To take a live node out gently, `brio mesh drain {target}` "
                "and run `brio mesh leave` on it",
            )
        try:
            moved = len((await mesh.store.node_tasks()).get(target, ()))
        except Exception as exc:
            log.warning("counting the tasks of %s failed: %s", target, exc)
            moved = 0
        by = caller.node_id or mesh.node_id
        if already is None:
            self._depart(target, "removed", by)
            role = peer.role if peer is not None and peer.role else "worker"
            await self._record(target, role, peer.address if peer else None, "removed")
        state = "was already removed" if already is not None else "removed"
        message = f"{target} {state}: no more tasks go to it"
        view = mesh.lease_view()
        if view.role == "primary" and mesh.placer is not None:
            mesh.placer.wake()
            message += f"; its {moved} assigned or running task(s) go back to the queue now"
        elif view.primary in (None, mesh.node_id, target):
            message += (
                "; no primary is known: its tasks are requeued by the next primary, once it "
                f"sees {target} fail"
            )
        elif caller.node_id == mesh.node_id:  # the operator's own call: tell the primary
            try:
                await self.mesh.calls.call(
                    view.primary, methods.REMOVE, pb.NodeRequest(node_id=target, force=True)
                )
            except (MeshCallError, LookupError) as exc:
                raise GRPCError(
                    Status.UNAVAILABLE,
                    f"{target} is removed on {mesh.node_id}, but the primary {view.primary} "
                    f"could not be told ({exc}); run it again, or on {view.primary}",
                ) from None
            message += (
                f"; the primary {view.primary} sends its {moved} assigned or running "
                "task(s) back to the queue now"
            )
        return pb.ActionResponse(node_id=target, message=message, moved=moved)

    # --- what the operations share ---------------------------------------------------------

    def _row(self, peer: Peer) -> pb.PeerStatus:
        gone = self.mesh.directory.departed.get(peer.node_id) if peer.node_id else None
        return peer_status(peer, gone)

    def _depart(self, node_id: str, how: str, by: str) -> None:
        """Take ``node_id`` out of this node's mesh: no work for it; a row that neither the
        config nor discovery keeps is forgotten; the primary's placer requeues its tasks."""
        mesh = self.mesh
        mesh.directory.depart(node_id, how, by, int(time.time() * 1000))
        peer = mesh.membership.by_node_id(node_id)
        reason = "said goodbye" if how == "left" else f"removed by {by}"
        if peer is not None and mesh.membership.drop(peer.address, trio.current_time(), reason):
            log.warning("peer %s (%s) %s: forgotten", node_id, peer.address, reason)
        else:
            log.warning("peer %s %s: out of the mesh", node_id, reason)
        if mesh.placer is not None and mesh.lease_view().role == "primary":
            mesh.placer.wake()

    def _goodbye_received(self, caller: Caller, payload: dict[str, Any]) -> pb.MeshResponse:
        mesh = self.mesh
        origin = caller.node_id
        if origin is None or mesh.membership.by_node_id(origin) is None:
            return _error(mesh, Code.PERMISSION_DENIED, "goodbyes are taken only from mesh peers")
        started = payload.get("started_unix_ms")
        if isinstance(started, int) and not isinstance(started, bool) and started > 0:
            mesh.directory.processes[origin] = started
        self._depart(origin, "left", origin)
        return _ok(mesh, {"dropped": True})

    async def _say_goodbye(self) -> tuple[list[str], list[str]]:
        """Tell every peer that answers (not the failed or removed ones) that we leave."""
        mesh = self.mesh
        told: list[str] = []
        missed: list[str] = []
        payload = {"started_unix_ms": mesh.local.started_unix_ms}
        limit = min(GOODBYE_TIMEOUT, mesh.config.mesh.call_timeout)

        async def tell(node_id: str) -> None:
            try:
                answer = await mesh.calls.call_node(
                    node_id, "node.goodbye", "", payload, timeout=limit
                )
            except (MeshCallError, LookupError) as exc:
                log.warning("goodbye to %s failed: %s", node_id, exc)
                missed.append(node_id)
                return
            if answer.is_set("error"):
                log.warning("%s refused our goodbye: %s", node_id, answer.error)
                missed.append(node_id)
            else:
                told.append(node_id)

        async with trio.open_nursery() as nursery:
            for peer in mesh.membership.peers():
                if peer.node_id is not None and peer.state not in DOWN:
                    nursery.start_soon(tell, peer.node_id)
        return sorted(told), sorted(missed)

    async def _forward(
        self, node_id: str, method: methods.Method, request: pb.NodeRequest
    ) -> pb.ActionResponse:
        try:
            reply: pb.ActionResponse = await self.mesh.calls.call(node_id, method, request)
        except LookupError:
            self._peer(node_id)
            raise
        except MeshCallError as exc:
            status = Status.__members__.get(exc.status or "")
            if exc.kind == "rejected" and status is not None:
                raise GRPCError(status, exc.detail.split(": ", 1)[-1]) from None
            raise GRPCError(Status.UNAVAILABLE, f"{node_id} did not answer: {exc}") from None
        return reply

    async def _record(self, node_id: str, role: str, address: str | None, status: str) -> str:
        """Write the node's status to the store's nodes table; '' or why it was not."""
        store = self.mesh.store
        try:
            with trio.fail_after(5.0):
                known = {n.id: n for n in await store.list_nodes()}.get(node_id)
                if known is not None:
                    record = replace(known, status=status)
                else:
                    record = NodeRecord(
                        id=node_id,
                        role=role,
                        address=address,
                        version=__version__ if node_id == self.mesh.node_id else "",
                        status=status,
                        last_seen=datetime.now(UTC),
                    )
                await store.upsert_node(record)
        except Exception as exc:
            log.warning("recording %s as %s in the store failed: %s", node_id, status, exc)
            return f" (not recorded in the store: {exc})"
        return ""


def peer_status(peer: Peer, departed: Departure | None = None) -> pb.PeerStatus:
    """A row of ``mesh status``: the table's view of one peer, with wall-clock times; a node
    that left or was removed (``departed``) says so, whatever its row's state."""
    now = trio.current_time()
    facts = peer.facts
    last_seen = 0
    if peer.last_seen is not None:
        last_seen = int((time.time() - (now - peer.last_seen)) * 1000)
    return pb.PeerStatus(
        node_id=peer.node_id or "",
        address=peer.address,
        role=peer.role or "",
        status=departed.how if departed is not None else str(peer.state),
        last_seen_unix_ms=last_seen,
        latency_ms=(peer.latency or 0.0) * 1000,
        missed_heartbeats=peer.missed,
        workload=pb.Load(active=facts.active, queued=facts.queued, max_agents=facts.max_agents)
        if facts
        else None,
        draining=facts.draining if facts else False,
        version=facts.version if facts else "",
        agents=list(facts.agents) if facts else [],
    )
