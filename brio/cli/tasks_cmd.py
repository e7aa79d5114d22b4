"""``brio tasks submit|get|list|watch``: a client of a node's HTTP API.

The node's address comes from ``--url``, else ``BRIO_URL``, else the local config's
``[server] host/port``; the token from ``--token``, else ``BRIO_API_TOKEN``, else the config.

httpx, trio and the config are imported by the functions that use them: ``brio tasks list
--url ... --token ...`` reads no config, and only ``watch`` and ``submit --wait`` run trio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from brio.cli.errors import CliError
from brio.cli.output import print_fields, print_table

# The node's limits, written here because importing them would load the server's modules (the
# CLI starts fast); tests/cli/test_tasks_batch.py checks that they agree.
BATCH_SIZE = 1000  # tasks per POST /api/tasks:batch (brio.api.models.MAX_BATCH)
SUBSCRIBE_CHUNK = 1000  # task ids per WebSocket subscribe message (models.WsSubscribe)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tasks_sub = parser.add_subparsers(dest="tasks_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help="node API base URL (default: BRIO_URL or the config)")
        p.add_argument("--token", help="API bearer token (default: BRIO_API_TOKEN)")
        p.add_argument("--config", help="config file to take the address and token from")
        p.add_argument("--json", action="store_true", help="print JSON")

    submit = tasks_sub.add_parser("submit", help="submit a task, or a batch of them")
    submit.add_argument("agent", nargs="?", help="the agent's name (see GET /api/agents)")
    submit.add_argument("prompt", nargs="?")
    submit.add_argument("--input", help="JSON object passed to the agent", default=None)
    submit.add_argument("--session", dest="session_id")
    submit.add_argument("--idempotency-key")
    submit.add_argument("--priority", type=int, default=None)
    submit.add_argument(
        "--batch",
        metavar="FILE",
        help="JSON Lines, one POST /api/tasks body a line ('-': standard input), sent "
        f"through POST /api/tasks:batch {BATCH_SIZE} at a time, instead of AGENT PROMPT",
    )
    submit.add_argument("--wait", action="store_true", help="wait for the task(s) to finish")
    common(submit)

    get = tasks_sub.add_parser("get", help="show one task")
    get.add_argument("task_id")
    common(get)

    lst = tasks_sub.add_parser("list", help="list tasks, newest first")
    lst.add_argument("--status")
    lst.add_argument("--agent")
    lst.add_argument("--session", dest="session_id")
    lst.add_argument("--limit", type=int, default=20)
    lst.add_argument("--cursor")
    common(lst)

    watch = tasks_sub.add_parser("watch", help="stream events of tasks until they finish")
    watch.add_argument("task_ids", nargs="*")
    watch.add_argument("--all", action="store_true", help="every event, until interrupted")
    common(watch)


def _target(args: argparse.Namespace) -> tuple[str, str | None]:
    url = args.url or os.environ.get("BRIO_URL")
    token = args.token or os.environ.get("BRIO_API_TOKEN")
    if url is None or token is None:
        from brio.config.errors import ConfigError
        from brio.config.load import load_config

        try:
            config = load_config(Path(args.config) if args.config else None).config
        except ConfigError as exc:
            raise CliError(f"cannot read the config to find the node:\n{exc}") from None
        if url is None:
            host = config.server.host
            host = "127.0.0.1" if host in ("0.0.0.0", "") else host
            host = (
                f"[{host}]" if ":" in host and host != "::" else ("[::1]" if host == "::" else host)
            )
            url = f"http://{host}:{config.server.port}"
        if token is None and config.server.auth_token is not None:
            token = config.server.auth_token.get_secret_value()
    return url.rstrip("/"), token


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _request(method: str, url: str, token: str | None, **kwargs: Any) -> Any:
    import httpx

    try:
        resp = httpx.request(method, url, headers=_headers(token), timeout=30, **kwargs)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach {url}: {exc}") from None
    try:
        body = resp.json()
    except ValueError:
        raise CliError(
            f"{url} answered {resp.status_code} with non-JSON: {resp.text[:200]}"
        ) from None
    if resp.status_code >= 400:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        raise CliError(f"{err.get('message', resp.text)} (HTTP {resp.status_code})")
    return body


def _finished(url: str, token: str | None, task_ids: list[str]) -> list[dict[str, Any]]:
    """Those of the tasks that have finished, read on one keep-alive connection."""
    import httpx

    done = []
    with httpx.Client(base_url=url, headers=_headers(token), timeout=30) as client:
        for task_id in task_ids:
            try:
                resp = client.get(f"/api/tasks/{quote(task_id, safe='')}")
                task = resp.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise CliError(f"cannot read task {task_id} from {url}: {exc}") from None
            if resp.status_code >= 400:
                message = task.get("error", {}).get("message", resp.text)
                raise CliError(f"{message} (HTTP {resp.status_code})")
            if task["status"] in ("succeeded", "failed", "cancelled"):
                done.append(task)
    return done


def _print_task(task: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(task, indent=2))
        return
    rows: list[tuple[str, str]] = [
        ("id", task["id"]),
        ("agent", task["agent"]),
        ("status", task["status"]),
        ("node", task["node_id"] or "-"),
        ("attempt", str(task["attempt"])),
        ("session", task["session_id"] or "-"),
        ("created", task["created_at"]),
        ("finished", task["finished_at"] or "-"),
    ]
    if task["error"]:
        rows.append(("error", task["error"]))
    if task["result"] is not None:
        result = task["result"]
        rows.append(("result", result if isinstance(result, str) else json.dumps(result)))
    print_fields(rows)


def _print_table(tasks: list[dict[str, Any]]) -> None:
    """Newest first; ``CREATED`` to the second (the API gives microseconds and the zone)."""
    print_table(
        ["ID", "AGENT", "STATUS", "NODE", "CREATED"],
        [
            [t["id"], t["agent"], t["status"], t["node_id"] or "-", t["created_at"][:19]]
            for t in tasks
        ],
    )


# How many times ``_watch`` subscribes again after the node cut it off as a slow consumer (it
# first reads which tasks finished meanwhile, so each time it goes on from where it was).
MAX_RESUBSCRIBES = 20


@dataclass
class _Watched:
    """The tasks ``_watch`` follows, which have not finished yet, and whether one failed."""

    task_ids: frozenset[str]
    pending: set[str]
    printer: EventPrinter
    failed: bool = False

    def show(self, event: dict[str, Any]) -> None:
        if event.get("task_id") in self.task_ids and event["task_id"] not in self.pending:
            return  # already reported finished
        self.printer(event)
        if event.get("type") == "task_completed":
            self.failed |= event["data"]["status"] != "succeeded"
            self.pending.discard(event["task_id"])


async def _watch(
    url: str, token: str | None, task_ids: list[str], everything: bool, as_json: bool
) -> int:
    from trio_websocket import HandshakeError

    ws_url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/ws"
    watched = _Watched(frozenset(task_ids), set(task_ids), EventPrinter(as_json))
    for _ in range(MAX_RESUBSCRIBES + 1):
        try:
            cut_off = await _watch_once(ws_url, url, token, watched, everything)
        except HandshakeError as exc:
            raise CliError(f"cannot open {ws_url}: {exc}") from None
        except OSError as exc:
            raise CliError(f"cannot reach {ws_url}: {exc}") from None
        if not cut_off:
            return 1 if watched.failed else 0
        if everything:  # the events it missed are gone
            raise CliError(f"{ws_url} closed the stream: slow consumer")
    raise CliError(f"{ws_url} cut this client off as a slow consumer {MAX_RESUBSCRIBES + 1} times")


async def _watch_once(
    ws_url: str, url: str, token: str | None, watched: _Watched, everything: bool
) -> bool:
    """Subscribe and show events until every watched task has finished (False), or until the
    node cuts this client off as a slow consumer (True)."""
    import trio
    from trio_websocket import ConnectionClosed, open_websocket_url

    ids = sorted(watched.pending)
    headers = [(k.encode(), v.encode()) for k, v in _headers(token).items()]
    outcome: bool | CliError = False
    async with open_websocket_url(ws_url, extra_headers=headers) as ws:
        try:
            chunks = [ids[at : at + SUBSCRIBE_CHUNK] for at in range(0, len(ids), SUBSCRIBE_CHUNK)]
            for chunk in chunks or [[]]:
                await ws.send_message(
                    json.dumps({"action": "subscribe", "tasks": chunk, "all": everything})
                )
            early: list[dict[str, Any]] = []  # events that overtook the acknowledgements
            acks = 0
            while acks < max(1, len(chunks)):
                message = json.loads(await ws.get_message())
                if message.get("type") == "error":
                    raise CliError(f"the node refused the subscription: {message['error']}")
                if message.get("type") == "subscribed":
                    acks += 1
                else:
                    early.append(message)
            for event in early:
                watched.show(event)
            async with trio.open_nursery() as nursery:

                async def finished_before() -> None:
                    # Subscribed now: a task that finished before this point sends no more
                    # events. Read meanwhile, so that the node never waits for this client.
                    nonlocal outcome
                    try:
                        done = await trio.to_thread.run_sync(
                            _finished, url, token, ids, abandon_on_cancel=True
                        )
                    except CliError as exc:
                        outcome = exc
                        nursery.cancel_scope.cancel()
                        return
                    for task in done:
                        watched.show(
                            {
                                "type": "task_completed",
                                "task_id": task["id"],
                                "data": {k: task[k] for k in ("status", "result", "error")},
                            }
                        )
                    if not watched.pending and not everything:
                        nursery.cancel_scope.cancel()

                nursery.start_soon(finished_before)
                try:
                    while watched.pending or everything:
                        watched.show(json.loads(await ws.get_message()))
                except ConnectionClosed as exc:
                    reason = exc.reason
                    if (
                        reason is not None
                        and reason.code == 1008
                        and reason.reason == "slow consumer"
                    ):
                        outcome = True
                    else:
                        outcome = CliError(f"{ws_url} closed the stream: {reason}")
                nursery.cancel_scope.cancel()
        except ConnectionClosed as exc:
            outcome = CliError(f"{ws_url} closed the stream: {exc.reason}")
    if isinstance(outcome, CliError):
        raise outcome
    return outcome


class EventPrinter:
    """Prints task events readably: streamed output as it comes, other events one per line."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.mid_line = False  # streamed output left the cursor inside a line

    def __call__(self, event: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps(event), flush=True)
            return
        kind, data, tid = event.get("type"), event.get("data", {}), event.get("task_id", "")
        if kind == "task_output":
            chunk = str(data.get("chunk", ""))
            print(chunk, end="", flush=True)
            if chunk:
                self.mid_line = not chunk.endswith("\n")
            return
        if kind == "task_completed":
            tail = data.get("error") or data.get("result")
            text = tail if isinstance(tail, str) else json.dumps(tail)
            line = f"[{tid}] {data.get('status')}: {text}"
        elif kind == "task_update":
            line = (
                f"[{tid}] {data.get('status')} (attempt {data.get('attempt')}, "
                f"node {data.get('node_id') or '-'})"
            )
        elif kind == "task_created":
            line = f"[{tid}] created ({data.get('agent')})"
        else:
            line = json.dumps(event)
        if self.mid_line:
            print()
            self.mid_line = False
        print(line, flush=True)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except CliError as exc:
        print(f"brio: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def read_batch(path: str) -> list[dict[str, Any]]:
    """The tasks of a ``--batch`` file: JSON Lines, one object a line; blank lines skipped."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"--batch: cannot read {path}: {exc}") from None
    tasks: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            task = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CliError(f"--batch {path} line {number}: not valid JSON: {exc}") from None
        if not isinstance(task, dict):
            raise CliError(f"--batch {path} line {number}: expected a JSON object (a task)")
        tasks.append(task)
    if not tasks:
        raise CliError(f"--batch {path}: no tasks in it")
    return tasks


def _print_outcomes(outcomes: list[dict[str, Any]]) -> None:
    """One row a task, in the file's order: the item number, its outcome, the task or error."""
    rows = []
    for i, r in enumerate(outcomes, 1):
        if r["outcome"] == "error":
            rows.append([str(i), "error", "-", f"{r['error']['message']} (HTTP {r['status']})"])
        else:
            rows.append([str(i), r["outcome"], r["task"]["id"], r["task"]["status"]])
    print_table(["#", "OUTCOME", "ID", "STATUS / ERROR"], rows)


def _submit_batch(args: argparse.Namespace, url: str, token: str | None) -> int:
    """``submit --batch``: each chunk is one request; every task gets a row; exit 1 if any
    task was refused (or, with ``--wait``, did not succeed)."""
    given = [
        flag
        for flag, value in (
            ("AGENT PROMPT", args.agent),
            ("--input", args.input),
            ("--session", args.session_id),
            ("--idempotency-key", args.idempotency_key),
            ("--priority", args.priority),
        )
        if value is not None
    ]
    if given:
        raise CliError(f"--batch takes each task's fields from its file, not {', '.join(given)}")
    tasks = read_batch(args.batch)
    outcomes: list[dict[str, Any]] = []
    for at in range(0, len(tasks), BATCH_SIZE):
        chunk = tasks[at : at + BATCH_SIZE]
        try:
            reply = _request("POST", f"{url}/api/tasks:batch", token, json={"tasks": chunk})
        except CliError as exc:
            done = f"; tasks 1-{at} were submitted" if at else ""
            raise CliError(f"tasks {at + 1}-{at + len(chunk)}: {exc}{done}") from None
        outcomes.extend(reply["results"])
    if args.json:
        print(json.dumps(outcomes, indent=2))
    else:
        _print_outcomes(outcomes)
    code = 1 if any(r["outcome"] == "error" for r in outcomes) else 0
    if args.wait:
        import trio

        ids = list(dict.fromkeys(r["task"]["id"] for r in outcomes if r["task"] is not None))
        if ids:
            code |= trio.run(_watch, url, token, ids, False, args.json)
    return code


def _run(args: argparse.Namespace) -> int:
    url, token = _target(args)
    action = args.tasks_command
    if action == "submit" and args.batch is not None:
        return _submit_batch(args, url, token)
    if action == "submit":
        if args.agent is None or args.prompt is None:
            raise CliError("submit: give AGENT and PROMPT, or --batch FILE")
        payload: dict[str, Any] = {
            "agent": args.agent,
            "prompt": args.prompt,
            "priority": args.priority or 0,
        }
        if args.input is not None:
            try:
                payload["input"] = json.loads(args.input)
            except json.JSONDecodeError as exc:
                raise CliError(f"--input: not valid JSON: {exc}") from None
        if args.session_id:
            payload["session_id"] = args.session_id
        if args.idempotency_key:
            payload["idempotency_key"] = args.idempotency_key
        task = _request("POST", f"{url}/api/tasks", token, json=payload)
        if args.wait:
            import trio

            code = trio.run(_watch, url, token, [task["id"]], False, args.json)
            _print_task(
                _request("GET", f"{url}/api/tasks/{quote(task['id'], safe='')}", token), args.json
            )
            return code
        _print_task(task, args.json)
        return 0
    if action == "get":
        _print_task(
            _request("GET", f"{url}/api/tasks/{quote(args.task_id, safe='')}", token), args.json
        )
        return 0
    if action == "list":
        params = {
            k: v
            for k, v in (
                ("status", args.status),
                ("agent", args.agent),
                ("session_id", args.session_id),
                ("limit", args.limit),
                ("cursor", args.cursor),
            )
            if v is not None
        }
        page = _request("GET", f"{url}/api/tasks", token, params=params)
        if args.json:
            print(json.dumps(page, indent=2))
        else:
            _print_table(page["tasks"])
            if page["next_cursor"]:
                print(f"(more: --cursor {page['next_cursor']})")
        return 0
    if action == "watch":
        if not args.task_ids and not args.all:
            raise CliError("watch: name task ids, or --all")
        import trio

        return trio.run(_watch, url, token, args.task_ids, args.all, args.json)
    raise CliError(f"unknown action {action!r}")
