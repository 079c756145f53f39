"""What channels report besides new messages (delivery reports, refusals, audits), and what a reply
carries for threading (ids of the thread, an id of its own fixed before the first attempt).
Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import pytest
from sqlalchemy import select

from channels.base import BaseChannel
from hub.access import Principal
from hub.app import Hub
from hub.errors import TransientError
from hub.model import (
    EventType,
    IdentityKind,
    InboundMessage,
    MessageStatus,
    OutboundMessage,
    Role,
    SendResult,
    ThreadHints,
    new_event,
)
from hub.outbox import Dispatcher, OutboxSettings
from hub.reports import moves_forward
from storage.models import Event, Message
from tests.conftest import hub_config


class MailLikeChannel(BaseChannel):
    """Chooses its own message ids, as email does; fails the first attempt to show a retry reuses it."""

    kind: ClassVar[str] = "mail-like"

    def __init__(self) -> None:
        super().__init__("mail", {})
        self.sent: list[OutboundMessage] = []
        self.ids_at_send: list[str | None] = []
        self.fail_first = True
        self.hub: Hub | None = None

    def outbound_id(self, msg: OutboundMessage) -> str | None:
        return f"<m{msg.message_id}@hub.example>"

    async def send(self, msg: OutboundMessage) -> SendResult:
        assert self.hub is not None
        async with self.hub.db.read() as s:
            stored = (
                await s.execute(select(Message.external_id).where(Message.id == msg.message_id))
            ).scalar_one()
        self.ids_at_send.append(stored)
        self.sent.append(msg)
        if self.fail_first:
            self.fail_first = False
            raise TransientError("421 try again later")
        return SendResult(external_id=self.outbound_id(msg))


@pytest.fixture
async def hub(tmp_path: Path, db_url: str) -> AsyncIterator[Hub]:
    async with Hub(hub_config(tmp_path, db_url), start_channels=False) as running:
        yield running


@pytest.fixture
async def agent(hub: Hub) -> Principal:
    return await hub.accounts.add("ada@example.com", "Ada Agent", Role.ADMIN, "password-ada-long")


def mail(message_id: str, subject: str = "Invoice", **thread: object) -> InboundMessage:
    return InboundMessage(
        channel="mail",
        channel_kind="email",
        external_id=message_id,
        identity_kind=IdentityKind.EMAIL,
        sender="Customer@Example.com",
        text="hello",
        thread=ThreadHints(subject=subject, strict=True, **thread),  # type: ignore[arg-type]
    )


async def events_of(hub: Hub, kind: str) -> list[Event]:
    async with hub.db.read() as s:
        return list((await s.execute(select(Event).where(Event.type == kind).order_by(Event.id))).scalars())


async def test_a_reply_carries_its_thread_and_keeps_its_id_across_retries(hub: Hub, agent: Principal) -> None:
    first = await hub.ingest(mail("<c1@customer>"))
    await hub.ingest(mail("<c2@customer>", "Re: Invoice", in_reply_to="<c1@customer>"))
    reply = await hub.conversations.reply(agent, first.conversation_id, "Here it is")
    message_id = int(reply["message"]["id"])
    channel = MailLikeChannel()
    channel.hub = hub
    dispatcher = Dispatcher(
        hub.db, hub.bus, lambda: {"mail": channel}, OutboxSettings(base_delay=0.0, max_delay=0.0)
    )
    await dispatcher.run_once()
    await dispatcher.run_once()
    assert len(channel.sent) == 2
    # The id was stored before the first attempt and the retry reused it.
    assert channel.ids_at_send == [f"<m{message_id}@hub.example>"] * 2
    thread = channel.sent[0].thread
    assert thread.subject == "Invoice"
    assert thread.in_reply_to == "<c2@customer>"
    assert thread.references == ("<c1@customer>", "<c2@customer>")
    assert thread.reply_tag == f"c{first.conversation_id}"
    # The customer's answer to the reply threads by the reply's id.
    answer = await hub.ingest(
        mail("<c3@customer>", "something else", in_reply_to=f"<m{message_id}@hub.example>")
    )
    assert answer.conversation_id == first.conversation_id


@pytest.mark.parametrize(
    ("current", "report", "expected"),
    [
        ("queued", MessageStatus.SENT, True),
        ("sent", MessageStatus.DELIVERED, True),
        ("delivered", MessageStatus.SENT, False),
        ("read", MessageStatus.DELIVERED, False),
        ("sent", MessageStatus.FAILED, True),
        ("delivered", MessageStatus.FAILED, True),
        ("read", MessageStatus.FAILED, False),
        ("failed", MessageStatus.DELIVERED, False),
        ("failed", MessageStatus.FAILED, False),
    ],
)
def test_delivery_reports_only_move_forward(current: str, report: MessageStatus, expected: bool) -> None:
    assert moves_forward(current, report) is expected


async def test_a_bounce_marks_the_reply_failed_with_the_reason(hub: Hub, agent: Principal) -> None:
    first = await hub.ingest(mail("<d1@customer>"))
    reply = await hub.conversations.reply(agent, first.conversation_id, "Answer")
    message_id = int(reply["message"]["id"])
    async with hub.db.write() as s:
        row = await s.get(Message, message_id)
        assert row is not None
        row.external_id, row.status = "<out-1@hub.example>", "sent"
    reason = "550 5.1.1 mailbox unavailable"
    assert (
        await hub.delivery_update("mail", "<out-1@hub.example>", MessageStatus.FAILED, reason) == message_id
    )
    assert await hub.delivery_update("mail", "<unknown@hub.example>", MessageStatus.FAILED, reason) is None
    # A late "delivered" never undoes the failure.
    await hub.delivery_update("mail", "<out-1@hub.example>", MessageStatus.DELIVERED)
    async with hub.db.read() as s:
        row = await s.get(Message, message_id)
        assert row is not None and row.status == "failed" and row.error == reason
    failed = await events_of(hub, EventType.MESSAGE_FAILED)
    assert [(e.message_id, e.data["error"]) for e in failed] == [(message_id, reason)]


async def test_refusals_are_recorded_once_and_count_as_known(hub: Hub) -> None:
    stored = await hub.ingest(mail("<e1@customer>"))
    assert stored.message_id
    await hub.refused("mail", "<e2@customer>", "attachment too large", sender="x@example.com")
    await hub.refused("mail", "<e2@customer>", "attachment too large", sender="x@example.com")
    await hub.refused("mail", None, "no Message-ID and no body")
    assert await hub.known_ids("mail", ["<e1@customer>", "<e2@customer>", "<e3@customer>"]) == {
        "<e1@customer>",
        "<e2@customer>",
    }
    assert await hub.known_ids("other", ["<e1@customer>"]) == set()
    refused = await events_of(hub, EventType.MESSAGE_REFUSED)
    assert [e.data["reason"] for e in refused] == ["attachment too large"] * 2 + ["no Message-ID and no body"]


async def test_channel_events_are_recorded_and_published(hub: Hub) -> None:
    async with hub.bus.subscribe() as queue:
        await hub.record([new_event(EventType.CHANNEL_AUDIT, channel="mail", checked=3, missing=0)])
        published = await queue.get()
    assert published is not None and published.id is not None and published.type == "channel.audit"
    assert [e.data["checked"] for e in await events_of(hub, EventType.CHANNEL_AUDIT)] == [3]
