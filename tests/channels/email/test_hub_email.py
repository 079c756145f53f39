"""The whole hub with an email channel against real servers: Dovecot or pymap in, aiosmtpd out.

Each test runs a real :class:`~hub.app.Hub` (and, where an agent acts, its web app on a loopback
socket) and proves one promise of the design end to end: a customer's mail becomes a conversation
an agent answers and the customer's reply joins; a backlog, a hub restart, a server restart and a
renumbered mailbox each store every message exactly once; one message seen in two folders is one
timeline entry; an ugly message is stored or refused and never blocks the mailbox.
"""

from __future__ import annotations

import asyncio
import email.policy
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from sqlalchemy import func, select

from channels.email.parse import raw_external_id
from channels.email.receive import Cursor
from hub.app import Hub
from hub.config import ChannelConfig, HubConfig
from hub.model import EventType, Role
from hub.web.app import make_app
from storage.models import Event, Message
from tests.channels.email.conftest import SmtpServer
from tests.clients import call
from tests.conftest import Live, hub_config
from tests.peers.imap import DovecotServer, ImapServer, PymapServer

CHANNEL = "support-mail"
ADDRESS = "support@example.com"
FIXTURES = Path(__file__).parent / "fixtures"
# An SMTP server the tests that send nothing never reach (security "none" is allowed on loopback).
NO_SMTP = {"host": "127.0.0.1", "port": 2525, "security": "none", "timeout": 5.0}


def crlf(raw: bytes) -> bytes:
    """IMAP wants CRLF line ends; the fixture files have LF."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def customer_mail(
    n: int,
    *,
    tag: str = "hub",
    subject: str | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    sender: str | None = None,
) -> bytes:
    """A plain customer message with Message-ID ``<tag-n@example.net>``, CRLF line ends."""
    msg = EmailMessage()
    msg["From"] = sender or f"Customer {n} <customer{n}@example.net>"
    msg["To"] = ADDRESS
    msg["Subject"] = subject or f"Question {tag} {n}"
    msg["Message-ID"] = f"<{tag}-{n}@example.net>"
    if in_reply_to:
        msg["In-Reply-To"] = f"<{in_reply_to}>"
    if references:
        msg["References"] = " ".join(f"<{r}>" for r in references)
    msg.set_content(f"Hello, this is message {n} of {tag}.\n")
    return msg.as_bytes(policy=email.policy.SMTP)


def mailbox_settings(server: ImapServer, folder: str = "INBOX") -> dict[str, Any]:
    """One mailbox with short timers: tests wait for seconds, not minutes."""
    return {
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "password": server.password,
        "folder": folder,
        "tls": False,
        "timeout": 5.0,
        # Short: pymap does not push mail appended just as IDLE begins; the next IDLE finds it.
        "idle_seconds": 3.0,
        "poll_seconds": 0.2,
        "batch": 200,
    }


def email_config(
    tmp_path: Path,
    db_url: str,
    mailboxes: list[dict[str, Any]],
    smtp: SmtpServer | None = None,
) -> HubConfig:
    """A hub whose only channel is email (the count audit off: tests check counts themselves)."""
    settings: dict[str, Any] = {
        "address": ADDRESS,
        "display_name": "Example Support",
        "smtp": NO_SMTP
        if smtp is None
        else {"host": smtp.host, "port": smtp.port, "security": "none", "timeout": 5.0},
        "mailboxes": mailboxes,
        "audit_seconds": 0,
    }
    return hub_config(tmp_path, db_url, channels=[ChannelConfig("email", CHANNEL, settings)])


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}"


@asynccontextmanager
async def serving(cfg: HubConfig) -> AsyncIterator[tuple[Live, dict[str, str]]]:
    """A hub with its web app on loopback, and the headers of a logged-in admin."""
    async with Hub(cfg) as hub:
        await hub.accounts.add("admin@example.com", "Ada Admin", Role.ADMIN, "admin-password-long")
        token, _ = await hub.accounts.login("admin@example.com", "admin-password-long")
        server = TestServer(make_app(hub), host="127.0.0.1")
        await server.start_server()
        try:
            async with ClientSession() as http:
                yield Live(hub, server, http), {"Authorization": f"Bearer {token}"}
        finally:
            await server.close()


async def eventually(
    probe: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], *, within: float = 15.0
) -> Any:
    """Poll ``probe`` until ``done`` holds for its value; fail with the last value after ``within``."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {within} s; last value {value!r}")
        await asyncio.sleep(0.05)


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


async def distinct_inbound_ids(hub: Hub) -> int:
    async with hub.db.read() as s:
        return int(
            (
                await s.execute(
                    select(func.count(func.distinct(Message.external_id))).where(
                        Message.channel == CHANNEL, Message.direction == "in"
                    )
                )
            ).scalar_one()
        )


async def event_count(hub: Hub, kind: EventType) -> int:
    async with hub.db.read() as s:
        return int(
            (
                await s.execute(select(func.count()).select_from(Event).where(Event.type == kind.value))
            ).scalar_one()
        )


async def cursor_of(hub: Hub, server: ImapServer, folder: str = "INBOX") -> Cursor | None:
    key = f"{server.user}@{server.host}:{server.port}/{folder}"
    return Cursor.parse(await hub.load_cursor(CHANNEL, key))


async def stored_exactly(hub: Hub, count: int, within: float = 30.0) -> None:
    """Wait for ``count`` inbound messages, then prove each is stored and received once."""
    await eventually(lambda: inbound_count(hub), lambda n: n >= count, within=within)
    assert await inbound_count(hub) == count
    assert await distinct_inbound_ids(hub) == count
    assert await event_count(hub, EventType.MESSAGE_RECEIVED) == count


async def conversations(live: Live, headers: dict[str, str]) -> list[dict[str, Any]]:
    status, body = await call(live, "GET", f"/api/conversations?channel={CHANNEL}", headers)
    assert status == 200, body
    return list(body["conversations"])


async def conversation_messages(live: Live, headers: dict[str, str], conversation_id: int) -> list[Any]:
    status, body = await call(live, "GET", f"/api/conversations/{conversation_id}", headers)
    assert status == 200, body
    return list(body["messages"])


# -- (a) the round trip ----------------------------------------------------------------------------


async def test_customer_mail_agent_reply_and_customer_reply_share_one_conversation(
    tmp_path: Path, db_url: str, dovecot: DovecotServer, smtp_server: SmtpServer
) -> None:
    cfg = email_config(tmp_path, db_url, [mailbox_settings(dovecot)], smtp_server)
    async with serving(cfg) as (live, admin):
        await dovecot.append(
            customer_mail(1, tag="trip", subject="Printer on fire", sender="Carla <carla@example.net>")
        )
        found = await eventually(lambda: conversations(live, admin), lambda c: len(c) == 1)
        conversation = found[0]
        conversation_id = conversation["id"]
        assert conversation["channel_kind"] == "email"
        assert conversation["address"] == "carla@example.net"
        assert conversation["subject"] == "Printer on fire"
        first = await conversation_messages(live, admin, conversation_id)
        assert [(m["direction"], m["external_id"]) for m in first] == [("in", "trip-1@example.net")]

        status, body = await call(
            live,
            "POST",
            f"/api/conversations/{conversation_id}/messages",
            admin,
            json={"text": "Please unplug it. We are on our way."},
        )
        assert status == 202, body
        await eventually(lambda: asyncio.sleep(0, len(smtp_server.inbox.deliveries)), lambda n: n >= 1)
        delivered = smtp_server.inbox.only()
        assert smtp_server.inbox.deliveries[0].rcpt_tos == ["carla@example.net"]
        assert delivered["In-Reply-To"] == "<trip-1@example.net>"
        assert "<trip-1@example.net>" in str(delivered["References"])
        assert f"support+c{conversation_id}@example.com" in str(delivered["Reply-To"])
        assert "unplug" in delivered.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        ours = str(delivered["Message-ID"]).strip("<>")

        # The reply is marked sent under the Message-ID it went out with.
        sent = await eventually(
            lambda: conversation_messages(live, admin, conversation_id),
            lambda ms: any(m["direction"] == "out" and m["status"] == "sent" for m in ms),
        )
        assert [m["external_id"] for m in sent if m["direction"] == "out"] == [ours]

        await dovecot.append(
            customer_mail(
                2,
                tag="trip",
                subject="Re: Printer on fire",
                sender="Carla <carla@example.net>",
                in_reply_to=ours,
                references=("trip-1@example.net", ours),
            )
        )
        messages = await eventually(
            lambda: conversation_messages(live, admin, conversation_id),
            lambda ms: sum(m["direction"] == "in" for m in ms) == 2,
        )
        assert [(m["direction"], m["external_id"]) for m in messages] == [
            ("in", "trip-1@example.net"),
            ("out", ours),
            ("in", "trip-2@example.net"),
        ]
        assert [c["id"] for c in await conversations(live, admin)] == [conversation_id]


# -- (b) a backlog --------------------------------------------------------------------------------


@pytest.mark.slow
async def test_backlog_appended_while_the_hub_is_down_is_stored_once(
    tmp_path: Path, sqlite_url: str, dovecot: DovecotServer
) -> None:
    uids = await dovecot.append_many(customer_mail(n, tag="backlog") for n in range(1000))
    cfg = email_config(tmp_path, sqlite_url, [mailbox_settings(dovecot)])
    async with Hub(cfg) as hub:
        await stored_exactly(hub, 1000, within=60)
        cursor = await cursor_of(hub, dovecot)
        assert cursor is not None and cursor.uid == uids[-1]
    # A second start has nothing to replay.
    async with Hub(cfg) as hub:
        await dovecot.append(customer_mail(1000, tag="backlog"))
        await stored_exactly(hub, 1001)


# -- (c) the hub restarts while mail keeps arriving -------------------------------------------------


@pytest.mark.slow
async def test_hub_restart_mid_stream_stores_every_message_once(
    tmp_path: Path, sqlite_url: str, dovecot: DovecotServer
) -> None:
    total = 300
    cfg = email_config(tmp_path, sqlite_url, [mailbox_settings(dovecot)])

    async def keep_appending() -> None:
        async with dovecot.session() as client:
            for n in range(total):
                response = await client.append(customer_mail(n, tag="stream"), mailbox="INBOX")
                assert response.result == "OK", response.lines
                await asyncio.sleep(0.01)

    appending = asyncio.create_task(keep_appending())
    try:
        async with Hub(cfg) as hub:
            await eventually(lambda: inbound_count(hub), lambda n: n >= 30)
        assert not appending.done(), "the stream ended before the hub stopped: make it longer"
        await asyncio.sleep(0.3)  # mail arrives while no hub is running
        async with Hub(cfg) as hub:
            await appending
            await stored_exactly(hub, total)
    finally:
        if not appending.done():
            appending.cancel()
            await asyncio.gather(appending, return_exceptions=True)


# -- (d) the IMAP server restarts under a running hub -----------------------------------------------


async def test_mail_after_an_imap_server_restart_arrives(
    tmp_path: Path, sqlite_url: str, imap_server: ImapServer
) -> None:
    """Dovecot keeps its mail over the restart; pymap comes back empty under a new UIDVALIDITY, so
    its new mail has UIDs the cursor already passed."""
    cfg = email_config(tmp_path, sqlite_url, [mailbox_settings(imap_server)])
    async with Hub(cfg) as hub:
        await imap_server.append_many(customer_mail(n, tag="restart") for n in range(3))
        await stored_exactly(hub, 3)
        await imap_server.restart()
        await imap_server.append(customer_mail(3, tag="restart"))
        await stored_exactly(hub, 4)


# -- (e) UIDVALIDITY changes --------------------------------------------------------------------------


async def test_renumbered_mailbox_stores_nothing_twice_and_new_mail_arrives(
    tmp_path: Path, sqlite_url: str, dovecot: DovecotServer
) -> None:
    cfg = email_config(tmp_path, sqlite_url, [mailbox_settings(dovecot)])
    async with Hub(cfg) as hub:
        await dovecot.append_many(customer_mail(n, tag="renumber") for n in range(5))
        await stored_exactly(hub, 5)
        before = await cursor_of(hub, dovecot)
        validity = await dovecot.renumber()
        assert before is not None and validity != before.uidvalidity
        # The resync under the new UIDVALIDITY replays UIDs 1..5: ingest knows every one.
        await eventually(
            lambda: cursor_of(hub, dovecot),
            lambda c: c is not None and c.uidvalidity == validity and c.uid == 5,
        )
        await dovecot.append(customer_mail(5, tag="renumber"))
        await stored_exactly(hub, 6)
        assert await cursor_of(hub, dovecot) == Cursor(validity, 6)


async def test_uidvalidity_changed_in_place_resyncs_without_duplicates(
    tmp_path: Path, sqlite_url: str, dovecot: DovecotServer
) -> None:
    """The same UIDs under a new UIDVALIDITY (doveadm), noticed when the hub selects again."""
    cfg = email_config(tmp_path, sqlite_url, [mailbox_settings(dovecot)])
    async with Hub(cfg) as hub:
        await dovecot.append_many(customer_mail(n, tag="validity") for n in range(4))
        await stored_exactly(hub, 4)
        validity = await dovecot.set_uidvalidity()
        await dovecot.restart()  # drops the hub's connection: it selects the mailbox again
        await dovecot.append(customer_mail(4, tag="validity"))
        await stored_exactly(hub, 5)
        assert await cursor_of(hub, dovecot) == Cursor(validity, 5)


# -- (f) one message in two mailboxes -------------------------------------------------------------------


async def test_the_same_message_in_two_folders_is_one_timeline_entry(
    tmp_path: Path, sqlite_url: str, dovecot: DovecotServer
) -> None:
    await dovecot.create_mailbox("Sales")
    cfg = email_config(tmp_path, sqlite_url, [mailbox_settings(dovecot), mailbox_settings(dovecot, "Sales")])
    raw = customer_mail(1, tag="twice", subject="Both of you")
    async with serving(cfg) as (live, admin):
        await dovecot.append(raw)
        await dovecot.append(raw, mailbox="Sales")
        for folder in ("INBOX", "Sales"):
            await eventually(
                lambda folder=folder: cursor_of(live.hub, dovecot, folder),  # type: ignore[misc]
                lambda c: c is not None and c.uid == 1,
            )
        found = await conversations(live, admin)
        assert len(found) == 1
        messages = await conversation_messages(live, admin, found[0]["id"])
        assert [m["external_id"] for m in messages] == ["twice-1@example.net"]
        assert await event_count(live.hub, EventType.MESSAGE_RECEIVED) == 1


# -- (g) ugly mail ---------------------------------------------------------------------------------------


async def test_ugly_mail_is_stored_or_refused_and_the_mailbox_keeps_flowing(
    tmp_path: Path, sqlite_url: str, pymap: PymapServer
) -> None:
    ugly = [crlf(path.read_bytes()) for path in sorted(FIXTURES.glob("*.eml"))]
    assert len(ugly) >= 10
    expected = {raw_external_id(raw) for raw in ugly}
    cfg = email_config(tmp_path, sqlite_url, [mailbox_settings(pymap)])
    async with Hub(cfg) as hub:
        uids = await pymap.append_many(ugly)
        await eventually(
            lambda: cursor_of(hub, pymap), lambda c: c is not None and c.uid == uids[-1], within=30
        )
        # Every ugly message is accounted for: stored or refused (with its event), never both.
        assert await hub.known_ids(CHANNEL, expected) == expected
        async with hub.db.read() as s:
            stored_ids = set(
                (await s.execute(select(Message.external_id).where(Message.channel == CHANNEL))).scalars()
            )
            refusals = (
                await s.execute(select(Event.data).where(Event.type == EventType.MESSAGE_REFUSED.value))
            ).scalars()
            refused_ids = {data["external_id"] for data in refusals}
        assert stored_ids | refused_ids == expected
        assert not stored_ids & refused_ids
        stored = len(stored_ids)
        await pymap.append(customer_mail(1, tag="after-ugly"))
        await eventually(lambda: inbound_count(hub), lambda n: n == stored + 1)
        async with hub.db.read() as s:
            latest = (
                await s.execute(select(Message.external_id).order_by(Message.id.desc()).limit(1))
            ).scalar_one()
        assert latest == "after-ugly-1@example.net"
