"""Email in: how soon an APPENDed mail is a conversation an agent can read, and how fast a backlog drains.

World: one hub in this process (SQLite in a temporary directory, routing off) with one email channel
watching the INBOX of a private IMAP server started with the test suite's peers (tests/peers/imap.py):
Dovecot (the real thing; batches IDLE pushes) and pymap (pure Python, in memory).

``email_push`` (per server): N customer mails, one at a time and 50 ms apart (so each finds the
hub in IDLE), each with a new subject (a new conversation). An admin's ``/api/live`` socket is open
on the hub's web app, on loopback.

* ``p50_ms``/``p90_ms``/``p99_ms``/``max_ms``: from just before the APPEND command is sent (another
  IMAP connection, as a delivering MTA would) to the return of ``GET /api/conversations/{id}``
  listing the message, where ``id`` comes from the ``message.received`` event on the live socket.
  It includes the server's IDLE push, the fetch, parsing, the ingest commit and one REST read.
  Dovecot batches its IDLE notifications (about 0.5 s after the APPEND); pymap pushes at once.

``email_catchup`` (Dovecot): M mails are APPENDed while no hub runs; then the hub starts.

* ``seconds``: from the start of the hub (migrations and channel start included) until all M
  messages are committed (counted in the messages table every 50 ms).
* ``per_s``: M / ``seconds``.

When Dovecot is not installed its figures are a ``{"bench": ..., "skipped": reason}`` line.
Progress goes to stderr; a timing never fails the run.
"""

from __future__ import annotations

import asyncio
import email.policy
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestServer
from sqlalchemy import func, select

from bench.common import emit, latency_summary, progress, rounded
from hub.app import Hub
from hub.config import ChannelConfig, HubConfig
from hub.model import Role
from hub.web.app import make_app
from storage.models import Message
from tests.peers.imap import DovecotServer, ImapServer, PymapServer, dovecot_missing

CHANNEL = "bench-mail"
ADDRESS = "support@example.com"
ADMIN = ("bench-admin@example.com", "bench-admin-password")
# Longest one sample may take before the run is declared broken.
SAMPLE_TIMEOUT = 30.0
# Pause between samples, so each mail reaches a hub that is idle (in IDLE) again.
SAMPLE_GAP = 0.05


@dataclass(frozen=True, slots=True)
class EmailOptions:
    samples: int
    backlog: int
    servers: tuple[str, ...] = ("dovecot", "pymap")


def customer_mail(n: int, tag: str) -> bytes:
    """One customer message with its own subject and Message-ID ``<tag-n@example.net>``, CRLF ends."""
    msg = EmailMessage()
    msg["From"] = f"Customer {n} <customer{n}@example.net>"
    msg["To"] = ADDRESS
    msg["Subject"] = f"Question {tag} {n}"
    msg["Message-ID"] = f"<{tag}-{n}@example.net>"
    msg.set_content(f"Hello, this is message {n}.\n\nIt has a few lines, like a real one.\n")
    return msg.as_bytes(policy=email.policy.SMTP)


def hub_config(directory: Path, server: ImapServer) -> HubConfig:
    """A hub whose only channel is email on ``server``'s INBOX (plain IMAP on loopback, IDLE)."""
    mailbox = {
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password": server.password,
        "tls": False,
        "timeout": 10.0,
        # pymap misses a push for mail appended just as IDLE begins: re-IDLE soon enough that
        # such a sample costs seconds, not the run (it shows in max_ms).
        "idle_seconds": 5.0,
        "poll_seconds": 1.0,
        "batch": 200,
    }
    settings: dict[str, Any] = {
        "address": ADDRESS,
        # Nothing is sent: the SMTP server is never reached.
        "smtp": {"host": "127.0.0.1", "port": 2525, "security": "none"},
        "mailboxes": [mailbox],
        "audit_seconds": 0,
    }
    return HubConfig(
        data_dir=directory / "var",
        database_url=f"sqlite+aiosqlite:///{directory / 'hub.db'}",
        routing_enabled=False,
        channels=[ChannelConfig("email", CHANNEL, settings)],
    )


@asynccontextmanager
async def imap_server(kind: str) -> AsyncIterator[ImapServer]:
    """A started private server of ``kind``; killed and removed afterwards."""
    server: ImapServer
    if kind == "dovecot":
        server = DovecotServer.create()
    else:
        server = PymapServer("pymap", Path(tempfile.mkdtemp(prefix="bench-pymap-")))
    try:
        await server.start()
        progress(f"{kind} started in {server.started_in:.2f} s on port {server.port}")
        yield server
    finally:
        await server.kill()
        server.remove()


@asynccontextmanager
async def workdir() -> AsyncIterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="bench-email-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def inbound_count(hub: Hub) -> int:
    async with hub.db.read() as s:
        return int(
            (
                await s.execute(
                    select(func.count())
                    .select_from(Message)
                    .where(Message.channel == CHANNEL, Message.direction == "in")
                )
            ).scalar_one()
        )


async def received_conversation(ws: ClientWebSocketResponse) -> int:
    """The conversation id of the next ``message.received`` event on the live socket."""
    while True:
        frame = await ws.receive()
        if frame.type != WSMsgType.TEXT:
            raise RuntimeError(f"the live socket ended: {frame!r}")
        data = frame.json()
        event = data.get("event") or {}
        if data.get("type") == "event" and event.get("type") == "message.received":
            return int(event["conversation_id"])


async def push_sample(
    server: ImapServer, appender: Any, http: ClientSession, base: str, ws: ClientWebSocketResponse, n: int
) -> float:
    """Seconds from APPEND to the message being readable through the REST API."""
    raw = customer_mail(n, f"push-{server.name}")
    wanted = f"push-{server.name}-{n}@example.net"
    began = time.perf_counter()
    response = await appender.append(raw, mailbox="INBOX")
    if response.result != "OK":
        raise RuntimeError(f"{server.name}: APPEND failed: {response.lines}")
    async with asyncio.timeout(SAMPLE_TIMEOUT):
        conversation_id = await received_conversation(ws)
        async with http.get(f"{base}/api/conversations/{conversation_id}") as r:
            status, body = r.status, await r.json()
    took = time.perf_counter() - began
    if status != 200 or wanted not in {m["external_id"] for m in body["messages"]}:
        raise RuntimeError(f"conversation {conversation_id} does not show {wanted}: {status} {body}")
    return took


async def email_push(kind: str, samples: int) -> None:
    """``email_push`` against one server kind: one JSON line."""
    async with workdir() as directory, imap_server(kind) as server:
        async with Hub(hub_config(directory, server)) as hub:
            await hub.accounts.add(ADMIN[0], "Bench Admin", Role.ADMIN, ADMIN[1])
            token, _ = await hub.accounts.login(*ADMIN)
            web = TestServer(make_app(hub), host="127.0.0.1")
            await web.start_server()
            try:
                base = str(web.make_url("")).rstrip("/")
                headers = {"Authorization": f"Bearer {token}"}
                async with ClientSession(headers=headers) as http, server.session() as appender:
                    ws = await http.ws_connect(base.replace("http://", "ws://", 1) + "/api/live")
                    try:
                        hello = await ws.receive_json(timeout=10)
                        if hello.get("type") != "hello":
                            raise RuntimeError(f"the live socket said {hello!r} first")
                        # One unmeasured message: the mailbox is connected and IDLE when timing starts.
                        await push_sample(server, appender, http, base, ws, -1)
                        took: list[float] = []
                        for n in range(samples):
                            await asyncio.sleep(SAMPLE_GAP)
                            took.append(await push_sample(server, appender, http, base, ws, n))
                            if (n + 1) % 25 == 0:
                                progress(f"email_push {kind}: {n + 1}/{samples}")
                    finally:
                        await ws.close()
            finally:
                await web.close()
    summary = latency_summary(took)
    emit({"bench": "email_push", "server": kind, "samples": samples, **summary})


async def email_catchup(messages: int) -> None:
    """``email_catchup`` on Dovecot: one JSON line."""
    async with workdir() as directory, imap_server("dovecot") as server:
        began = time.perf_counter()
        chunk = 1000
        for start in range(0, messages, chunk):
            await server.append_many(
                customer_mail(n, "catchup") for n in range(start, min(messages, start + chunk))
            )
        progress(f"email_catchup: {messages} mails appended in {time.perf_counter() - began:.1f} s")
        began = time.perf_counter()
        async with Hub(hub_config(directory, server)) as hub:
            stored = 0
            last_report = began
            while stored < messages:
                await asyncio.sleep(0.05)
                stored = await inbound_count(hub)
                if time.perf_counter() - last_report > 5:
                    last_report = time.perf_counter()
                    progress(f"email_catchup: {stored}/{messages} committed")
            seconds = time.perf_counter() - began
    emit(
        {
            "bench": "email_catchup",
            "server": "dovecot",
            "db": "sqlite",
            "messages": messages,
            "stored": stored,
            "per_s": rounded(messages / seconds, 1),
            "seconds": rounded(seconds, 2),
        }
    )


async def run(opts: EmailOptions) -> None:
    """Every email figure; a missing Dovecot is a ``skipped`` line, not a failure."""
    missing = dovecot_missing()
    for kind in opts.servers:
        if kind == "dovecot" and missing:
            emit({"bench": "email_push", "server": kind, "skipped": missing})
            continue
        await email_push(kind, opts.samples)
    if missing:
        emit({"bench": "email_catchup", "server": "dovecot", "skipped": missing})
    else:
        await email_catchup(opts.backlog)
