"""Web chat to agent: a visitor's frame -> committed -> on a connected agent's ``/api/live`` socket.

The hub runs as ``hub serve`` in its own process with a fresh SQLite data dir; this process is the
load generator. V visitors (``POST /webchat/session`` then ``/webchat/ws``) send message frames on an
open-loop schedule — message k is due at ``start + k / R`` whatever happened to earlier ones, sent by
visitor ``k mod V`` — and one admin agent listens on ``/api/live``. A message's latency runs from
the moment its frame is handed to the socket to the moment the agent's socket yields the
``message.received`` event carrying its text; ``p99_from_schedule_ms`` measures from when it was
due instead, so a load generator that fell behind cannot hide latency. ``lost`` counts messages
sent but never seen by the agent. ``first_p99_ms`` covers each visitor's first message (it also
creates the contact and the conversation), ``repeat_p99_ms`` the rest; ``ack_*`` time the visitor's
own acknowledgement; ``hub_cpu_ms_per_message`` is the hub process's CPU time (all threads) from the
first send until drained, per message.

The same schedule against a bare aiohttp echo server (``bench.echo_server``, also in its own process)
gives ``websocket_echo``: the round trip that no hub can beat on this machine.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientWebSocketResponse, TCPConnector, WSMsgType

from bench.common import ChildProcess, emit, free_port, progress, rounded
from bench.load import (
    CONNECT_TIMEOUT,
    NAN,
    Probe,
    close_all,
    connect_all,
    drain,
    read_frames,
    send_open_loop,
    seq_of,
)


@dataclass(frozen=True, slots=True)
class WebchatOptions:
    visitors: int
    rate: float
    duration: float
    echo: bool = True


# -- the baseline: a bare echo server ------------------------------------------------------------


async def bench_echo(opts: WebchatOptions, tmp: Path) -> dict[str, Any]:
    port = free_port()
    server = ChildProcess([sys.executable, "-m", "bench.echo_server", "--port", str(port)], tmp / "echo.log")
    await server.start(lambda line: line == "ready", within=30)
    probe = Probe(int(opts.rate * opts.duration))

    def on_echo(data: dict[str, Any], at: float) -> None:
        probe.arrive(seq_of(data.get("text")), at)

    try:
        async with ClientSession(connector=TCPConnector(limit=0)) as http:
            sockets = await connect_all(
                opts.visitors, lambda i: http.ws_connect(f"http://127.0.0.1:{port}/ws"), "echo sockets"
            )
            readers = [asyncio.create_task(read_frames(ws, on_echo)) for ws in sockets]
            progress(f"websocket_echo: {probe.count} messages at {opts.rate:g}/s")
            await send_open_loop(sockets, probe, opts.rate)
            await drain(probe, acks=False)
            await close_all(sockets, readers)
    finally:
        await server.stop()
    return {"bench": "websocket_echo", "visitors": opts.visitors, "rate": opts.rate, **probe.summary()}


# -- the hub ------------------------------------------------------------------------------------


def hub_command() -> list[str]:
    script = Path(sys.executable).with_name("hub")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from hub.cli import main; sys.exit(main())"]


def admin_login(lines: list[str]) -> tuple[str, str]:
    text = "\n".join(lines)
    email = re.search(r"email:\s+(\S+)", text)
    password = re.search(r"password:\s+(\S+)", text)
    if not email or not password:
        raise RuntimeError("the hub did not print the first admin's login")
    return email.group(1), password.group(1)


async def bench_hub(opts: WebchatOptions, tmp: Path) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [
        *hub_command(),
        "serve",
        "--data-dir",
        str(tmp / "hub"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    hub = ChildProcess(argv, tmp / "hub.log")
    await hub.start(lambda line: line.startswith("hub serving on"), within=60)
    probe = Probe(int(opts.rate * opts.duration))

    def on_visitor_frame(data: dict[str, Any], at: float) -> None:
        kind = data.get("type")
        if kind == "ack":
            client_id = data.get("client_id")
            if isinstance(client_id, str) and client_id[1:].isdigit():
                probe.ack(int(client_id[1:]), at)
        elif kind == "error":
            probe.errors += 1
            if probe.errors <= 3:
                progress(f"visitor got an error frame: {data}")

    def on_agent_frame(data: dict[str, Any], at: float) -> None:
        if data.get("type") == "event":
            event = data.get("event") or {}
            if event.get("type") == "message.received":
                probe.arrive(seq_of((event.get("data") or {}).get("text")), at)
        elif data.get("type") == "resync":
            probe.resyncs += 1

    cpu_before = cpu_after = None
    try:
        email, password = admin_login(hub.lines)
        async with ClientSession(connector=TCPConnector(limit=0)) as http:
            async with http.post(f"{base}/api/session", json={"email": email, "password": password}) as r:
                r.raise_for_status()
                token = (await r.json())["token"]
            agent = await http.ws_connect(
                f"{base}/api/live", headers={"Authorization": f"Bearer {token}"}, max_msg_size=0
            )

            async def visitor(i: int) -> ClientWebSocketResponse:
                async with http.post(f"{base}/webchat/session", json={"name": f"Visitor {i}"}) as r:
                    r.raise_for_status()
                    visitor_token = (await r.json())["token"]
                ws = await http.ws_connect(f"{base}/webchat/ws", params={"token": visitor_token})
                # Ready once the history arrived, as the widget is: the hub has finished connecting it.
                first = await ws.receive(timeout=CONNECT_TIMEOUT)
                if first.type != WSMsgType.TEXT or json.loads(first.data).get("type") != "history":
                    raise RuntimeError(f"visitor {i}: expected the history frame first, got {first.data!r}")
                return ws

            sockets = await connect_all(opts.visitors, visitor, "visitors")
            readers = [asyncio.create_task(read_frames(ws, on_visitor_frame)) for ws in sockets]
            readers.append(asyncio.create_task(read_frames(agent, on_agent_frame)))
            progress(f"webchat_to_agent: {probe.count} messages at {opts.rate:g}/s")
            cpu_before = hub.cpu_seconds()
            await send_open_loop(sockets, probe, opts.rate)
            await drain(probe, acks=True)
            cpu_after = hub.cpu_seconds()
            await close_all([*sockets, agent], readers)
    except Exception:
        progress(f"the hub's last words:\n{hub.tail()}")
        raise
    finally:
        await hub.stop()
    figure = {
        "bench": "webchat_to_agent",
        "db": "sqlite",
        "visitors": opts.visitors,
        "rate": opts.rate,
        # A visitor's first message also creates its contact and conversation; the rest thread in.
        **probe.summary(first=opts.visitors),
    }
    if cpu_before is not None and cpu_after is not None and probe.sent_count:
        # What one message costs the hub process in CPU (all threads), from first send to drained.
        figure["hub_cpu_ms_per_message"] = rounded((cpu_after - cpu_before) / probe.sent_count * 1000)
    return figure


async def run(opts: WebchatOptions) -> list[dict[str, Any]]:
    figures = []
    with tempfile.TemporaryDirectory(prefix="hub-bench-") as name:
        tmp = Path(name)
        echo: dict[str, Any] | None = None
        if opts.echo:
            echo = await bench_echo(opts, tmp)
            emit(echo)
            figures.append(echo)
        result = await bench_hub(opts, tmp)
        if echo is not None and echo.get("p99_ms"):
            result["echo_p99_ms"] = echo["p99_ms"]
            result["p99_over_echo"] = rounded((result.get("p99_ms") or NAN) / echo["p99_ms"], 2)
        emit(result)
        figures.append(result)
    return figures
