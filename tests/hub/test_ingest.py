"""Ingest: idempotent, one transaction per batch, commit before acknowledge, threading rules.
Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from hub.app import Hub
from hub.errors import IngestRefused
from hub.events import EventBus
from hub.ingest import Ingest
from hub.model import Attachment, ConversationStatus, IdentityKind, InboundMessage, ThreadHints, utcnow
from storage.engine import Database
from storage.models import AttachmentRow, Contact, ContactIdentity, Conversation, Event, Message


def chat(
    visitor: str, client_id: str, text: str = "hello", channel: str = "webchat", **kw: object
) -> InboundMessage:
    return InboundMessage(
        channel=channel,
        channel_kind="webchat",
        external_id=f"{visitor}:{client_id}",
        identity_kind=IdentityKind.WEBCHAT,
        sender=visitor,
        text=text,
        **kw,  # type: ignore[arg-type]
    )


async def count(db: Database, model: type) -> int:
    async with db.read() as s:
        return int((await s.execute(select(func.count()).select_from(model))).scalar_one())


async def counts(db: Database) -> dict[str, int]:
    return {
        m.__tablename__: await count(db, m) for m in (Contact, ContactIdentity, Conversation, Message, Event)
    }


async def test_replay_changes_nothing(hub: Hub) -> None:
    msgs = [chat(f"v-{i % 7}", f"c{i}", f"message {i}") for i in range(60)]
    first = await asyncio.gather(*(hub.ingest(m) for m in msgs))
    before = await counts(hub.db)
    again = await asyncio.gather(*(hub.ingest(m) for m in msgs))
    assert before == await counts(hub.db)
    assert before["messages"] == 60 and before["contacts"] == 7 and before["conversations"] == 7
    assert [r.message_id for r in first] == [r.message_id for r in again]
    assert not any(r.duplicate for r in first) and all(r.duplicate for r in again)


async def test_concurrent_duplicates_store_one_row(hub: Hub) -> None:
    msg = chat("v-dup", "same-client-id")
    results = await asyncio.gather(*(hub.ingest(msg) for _ in range(25)))
    assert len({r.message_id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    assert await count(hub.db, Message) == 1


async def test_concurrent_duplicates_from_two_hub_processes(hub: Hub, db_url: str) -> None:
    """A second ingest with its own engine (as another process would have) races on the same keys:
    the unique key decides, and every sender still gets the one stored message's id."""
    other_db = Database(db_url)
    other = Ingest(other_db, EventBus(), hub.attachments)
    try:
        msgs = [chat(f"v-race-{i % 5}", f"c{i}") for i in range(40)]
        mine, theirs = await asyncio.gather(
            asyncio.gather(*(hub.ingest(m) for m in msgs)),
            asyncio.gather(*(other.submit(m) for m in reversed(msgs))),
        )
    finally:
        await other.close()
        await other_db.dispose()
    assert [r.message_id for r in mine] == [r.message_id for r in reversed(theirs)]
    assert await count(hub.db, Message) == 40
    assert await count(hub.db, Contact) == 5
    assert await count(hub.db, Conversation) == 5


async def test_group_commit_batches_concurrent_messages(hub: Hub) -> None:
    before = hub.ingester.batches
    results = await asyncio.gather(*(hub.ingest(chat(f"v-g{i}", "c")) for i in range(400)))
    batches = hub.ingester.batches - before
    assert len({r.message_id for r in results}) == 400
    assert batches < 40, f"400 concurrent messages took {batches} transactions"
    assert await count(hub.db, Message) == 400


async def test_acknowledged_means_committed(hub: Hub, db_url: str) -> None:
    """When ingest returns, another connection already sees the message, conversation and events."""
    observer = Database(db_url)
    try:
        for i in range(5):
            result = await hub.ingest(chat("v-ack", f"c{i}", f"text {i}"))
            async with observer.read() as s:
                row = (await s.execute(select(Message).where(Message.id == result.message_id))).scalar_one()
                events = (
                    await s.execute(select(Event.type).where(Event.message_id == result.message_id))
                ).scalars()
                assert row.text == f"text {i}"
                assert "message.received" in set(events)
    finally:
        await observer.dispose()


async def test_refused_message_does_not_spoil_its_batch(hub: Hub) -> None:
    good = [chat(f"v-ok{i}", "c") for i in range(10)]
    bad = InboundMessage("sms", "sms", "SM1", IdentityKind.PHONE, "not a number", "hi")
    outcomes = await asyncio.gather(
        *(hub.ingest(m) for m in [*good[:5], bad, *good[5:]]), return_exceptions=True
    )
    assert isinstance(outcomes[5], IngestRefused)
    assert "not a phone number" in str(outcomes[5])
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 10
    assert await count(hub.db, Message) == 10


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (InboundMessage("webchat", "webchat", "", IdentityKind.WEBCHAT, "v-x", "hi"), "external id"),
        (chat("has space", "c"), "visitor id"),
        (chat("v-x", "c", "x" * 20_001), "limit"),
        (
            chat("v-x", "c", attachments=(Attachment("big.bin", "application/octet-stream", b"0" * 2048),)),
            "limit",
        ),
    ],
)
async def test_bad_input_is_refused_with_a_reason(hub: Hub, msg: InboundMessage, reason: str) -> None:
    hub.attachments.max_bytes = 1024
    with pytest.raises(IngestRefused, match=reason):
        await hub.ingest(msg)
    assert await count(hub.db, Message) == 0


async def test_identities_are_normalised_to_one_contact(hub: Hub) -> None:
    def mail(sender: str, n: int) -> InboundMessage:
        return InboundMessage("mail", "email", f"<m{n}@x>", IdentityKind.EMAIL, sender, "hi")

    def sms(sender: str, n: int) -> InboundMessage:
        return InboundMessage("sms", "sms", f"SM{n}", IdentityKind.PHONE, sender, "hi")

    a = await hub.ingest(mail("Alice <ALICE@example.com>", 1))
    b = await hub.ingest(mail("alice@EXAMPLE.com", 2))
    c = await hub.ingest(sms("+44 20 7946 0958", 3))
    d = await hub.ingest(sms("+442079460958", 4))
    assert a.contact_id == b.contact_id and a.conversation_id == b.conversation_id
    assert c.contact_id == d.contact_id != a.contact_id
    async with hub.db.read() as s:
        values = set((await s.execute(select(ContactIdentity.value))).scalars())
    assert values == {"alice@example.com", "+442079460958"}


async def test_html_is_sanitised_and_text_kept_verbatim(hub: Hub) -> None:
    hostile = '<p onclick="x()">Hi<script>alert(1)</script><img src=x onerror=alert(1)></p>'
    result = await hub.ingest(chat("v-html", "c", text="<b>raw</b>", html=hostile))
    async with hub.db.read() as s:
        row = await s.get(Message, result.message_id)
    assert row is not None
    assert row.text == "<b>raw</b>"
    assert row.html is not None and "script" not in row.html and "onerror" not in row.html
    assert "onclick" not in row.html and "Hi" in row.html


async def test_attachments_are_stored_by_content(hub: Hub) -> None:
    data = b"%PDF-1.4 fake"
    att = (Attachment("invoice.pdf", "application/pdf", data),)
    r1 = await hub.ingest(chat("v-att", "c1", attachments=att))
    await hub.ingest(chat("v-att", "c2", attachments=att))
    async with hub.db.read() as s:
        rows = list((await s.execute(select(AttachmentRow).order_by(AttachmentRow.id))).scalars())
    assert len(rows) == 2 and rows[0].message_id == r1.message_id
    assert rows[0].sha256 == rows[1].sha256 and rows[0].size == len(data)
    assert hub.attachments.get(rows[0].sha256) == data


async def test_events_record_what_happened_in_order(hub: Hub) -> None:
    r = await hub.ingest(chat("v-ev", "c1", thread=ThreadHints(subject="Order 42")))
    async with hub.db.read() as s:
        events = list((await s.execute(select(Event).order_by(Event.id))).scalars())
        conv = await s.get(Conversation, r.conversation_id)
    assert [e.type for e in events] == ["contact.created", "conversation.created", "message.received"]
    assert events[-1].message_id == r.message_id and events[-1].conversation_id == r.conversation_id
    assert events[-1].data["assignee_id"] is None
    assert conv is not None and conv.subject == "Order 42" and conv.status == "open"


# -- threading -------------------------------------------------------------------------------


async def set_status(
    hub: Hub, conversation_id: int, status: str, resolved_ago: timedelta | None = None
) -> None:
    async with hub.db.write() as s:
        await s.execute(
            update(Conversation)
            .where(Conversation.id == conversation_id)
            .values(status=status, resolved_at=utcnow() - resolved_ago if resolved_ago is not None else None)
        )


async def test_same_contact_same_channel_joins_the_open_conversation(hub: Hub) -> None:
    a = await hub.ingest(chat("v-t", "1"))
    b = await hub.ingest(chat("v-t", "2"))
    other_channel = await hub.ingest(chat("v-t", "3", channel="webchat-2"))
    assert a.conversation_id == b.conversation_id
    assert other_channel.conversation_id != a.conversation_id
    assert other_channel.contact_id == a.contact_id


@pytest.mark.parametrize("status", [ConversationStatus.PENDING, ConversationStatus.SNOOZED])
async def test_a_customer_message_reopens_pending_and_snoozed(hub: Hub, status: ConversationStatus) -> None:
    a = await hub.ingest(chat("v-p", "1"))
    await set_status(hub, a.conversation_id, status.value)
    b = await hub.ingest(chat("v-p", "2"))
    assert b.conversation_id == a.conversation_id
    async with hub.db.read() as s:
        conv = await s.get(Conversation, a.conversation_id)
        changed = (
            await s.execute(select(Event).where(Event.type == "conversation.status_changed"))
        ).scalar_one()
    assert conv is not None and conv.status == "open"
    assert changed.data["previous"] == status.value and changed.data["status"] == "open"


async def test_resolved_inside_the_quiet_period_reopens(hub: Hub) -> None:
    a = await hub.ingest(chat("v-r", "1"))
    await set_status(hub, a.conversation_id, "resolved", resolved_ago=timedelta(hours=1))
    b = await hub.ingest(chat("v-r", "2"))
    assert b.conversation_id == a.conversation_id
    async with hub.db.read() as s:
        conv = await s.get(Conversation, a.conversation_id)
    assert conv is not None and conv.status == "open" and conv.resolved_at is None


async def test_resolved_after_the_quiet_period_starts_a_new_conversation(hub: Hub) -> None:
    a = await hub.ingest(chat("v-n", "1"))
    await set_status(hub, a.conversation_id, "resolved", resolved_ago=timedelta(hours=25))
    b = await hub.ingest(chat("v-n", "2"))
    assert b.conversation_id != a.conversation_id and b.contact_id == a.contact_id
    async with hub.db.read() as s:
        old = await s.get(Conversation, a.conversation_id)
    assert old is not None and old.status == "resolved"


async def test_text_that_is_not_unicode_is_refused(hub: Hub) -> None:
    with pytest.raises(IngestRefused, match="not valid Unicode"):
        await hub.ingest(chat("v-u", "c", text="broken \ud800 text"))
    assert await count(hub.db, Message) == 0


async def test_one_unstorable_message_fails_alone(hub: Hub) -> None:
    """A message the database refuses fails only its own sender; the rest of its batch is stored."""
    bad = chat("v-bad", "c", contact_attributes={"not json": object()})
    good = [chat(f"v-good{i}", "c") for i in range(8)]
    outcomes = await asyncio.gather(
        *(hub.ingest(m) for m in [*good[:4], bad, *good[4:]]), return_exceptions=True
    )
    assert isinstance(outcomes[4], BaseException)
    assert all(not isinstance(o, BaseException) for i, o in enumerate(outcomes) if i != 4)
    assert await count(hub.db, Message) == 8


async def test_long_display_fields_are_clipped_not_lost(hub: Hub) -> None:
    r = await hub.ingest(chat("v-long", "c", sender_name="N" * 400, thread=ThreadHints(subject="S" * 900)))
    async with hub.db.read() as s:
        message = await s.get(Message, r.message_id)
        conv = await s.get(Conversation, r.conversation_id)
        contact = await s.get(Contact, r.contact_id)
    assert message is not None and conv is not None and contact is not None
    assert len(message.author_name or "") == 200 and (message.author_name or "").endswith("…")
    assert len(contact.name or "") == 200 and len(conv.subject or "") == 500
