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
from pathlib import Path
from typing import Any
from urllib.parse import quote

from brio.cli.errors import CliError
from brio.cli.output import print_fields, print_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tasks_sub = parser.add_subparsers(dest="tasks_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help="node API base URL (default: BRIO_URL or the config)")
        p.add_argument("--token", help="API bearer token (default: BRIO_API_TOKEN)")
        p.add_argument("--config", help="config file to take the address and token from")
        p.add_argument("--json", action="store_true", help="print JSON")

    submit = tasks_sub.add_parser("submit", help="submit a task")
    submit.add_argument("agent", help="the agent's name (see GET /api/agents)")
    submit.add_argument("prompt")
    submit.add_argument("--input", help="JSON object passed to the agent", default=None)
    submit.add_argument("--session", dest="session_id")
    submit.add_argument("--idempotency-key")
    submit.add_argument("--priority", type=int, default=0)
    submit.add_argument("--wait", action="store_true", help="wait for the task to finish")
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


async def _watch(
    url: str, token: str | None, task_ids: list[str], everything: bool, as_json: bool
) -> int:
    import trio
    from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

    ws_url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/ws"
    pending = set(task_ids)
    try:
        async with open_websocket_url(
            ws_url, extra_headers=list((k.encode(), v.encode()) for k, v in _headers(token).items())
        ) as ws:
            await ws.send_message(
                json.dumps({"action": "subscribe", "tasks": task_ids, "all": everything})
            )
            early: list[dict[str, Any]] = []  # events that overtook the acknowledgement
            while (message := json.loads(await ws.get_message())).get("type") != "subscribed":
                if message.get("type") == "error":
                    raise CliError(f"the node refused the subscription: {message['error']}")
                early.append(message)
            failed = False
            print_event = EventPrinter(as_json)

            def show(event: dict[str, Any]) -> None:
                nonlocal failed
                if event.get("task_id") in task_ids and event["task_id"] not in pending:
                    return  # already reported finished
                print_event(event)
                if event.get("type") == "task_completed":
                    failed |= event["data"]["status"] != "succeeded"
                    pending.discard(event["task_id"])

            for event in early:
                show(event)
            # Subscribed now: a task that finished before this point sends no more events.
            for task_id in list(pending):
                task = await trio.to_thread.run_sync(
                    _request, "GET", f"{url}/api/tasks/{quote(task_id, safe='')}", token
                )
                if task["status"] in ("succeeded", "failed", "cancelled"):
                    show(
                        {
                            "type": "task_completed",
                            "task_id": task_id,
                            "data": {k: task[k] for k in ("status", "result", "error")},
                        }
                    )
            while pending or everything:
                show(json.loads(await ws.get_message()))
    except HandshakeError as exc:
        raise CliError(f"cannot open {ws_url}: {exc}") from None
    except ConnectionClosed as exc:
        raise CliError(f"{ws_url} closed the stream: {exc.reason}") from None
    except OSError as exc:
        raise CliError(f"cannot reach {ws_url}: {exc}") from None
    return 1 if failed else 0


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


def _run(args: argparse.Namespace) -> int:
    url, token = _target(args)
    action = args.tasks_command
    if action == "submit":
        payload: dict[str, Any] = {
            "agent": args.agent,
            "prompt": args.prompt,
            "priority": args.priority,
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
