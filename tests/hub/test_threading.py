"""Threading of channels that carry their own keys (email): which conversation a message joins, and
the rule that decided it. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from hub.app import Hub
from hub.ingest import thread_subject
from hub.model import ConversationStatus, IdentityKind, InboundMessage, ThreadHints, utcnow
from storage.models import Conversation, Event, Message


def mail(
    sender: str,
    message_id: str,
    subject: str,
    *,
    in_reply_to: str | None = None,
    references: tuple[str, ...] = (),
    tag: str | None = None,
    channel: str = "mail",
    automated: bool = False,
    text: str = "hello",
    full_text: str | None = None,
) -> InboundMessage:
    return InboundMessage(
        channel=channel,
        channel_kind="email",
        external_id=message_id,
        identity_kind=IdentityKind.EMAIL,
        sender=sender,
        text=text,
        full_text=full_text,
        automated=automated,
        thread=ThreadHints(
            subject=subject, in_reply_to=in_reply_to, references=references, reply_tag=tag, strict=True
        ),
    )


async def rule_of(hub: Hub, message_id: int) -> str:
    async with hub.db.read() as s:
        meta = (await s.execute(select(Message.meta).where(Message.id == message_id))).scalar_one()
    return str(meta["thread_rule"])


async def set_status(
    hub: Hub, conversation_id: int, status: str, *, resolved_ago: timedelta | None = None
) -> None:
    values: dict[str, object] = {"status": status}
    if resolved_ago is not None:
        values["resolved_at"] = utcnow() - resolved_ago
    async with hub.db.write() as s:
        await s.execute(update(Conversation).where(Conversation.id == conversation_id).values(**values))


async def status_of(hub: Hub, conversation_id: int) -> str:
    async with hub.db.read() as s:
        return str(
            (
                await s.execute(select(Conversation.status).where(Conversation.id == conversation_id))
            ).scalar_one()
        )


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Re: Invoice 42", "invoice 42"),
        ("RE: AW: Fwd:  Invoice   42", "invoice 42"),
        ("Re[2]: Invoice 42", "invoice 42"),
        ("SV: Faktura", "faktura"),
        ("Invoice 42", "invoice 42"),
        (None, ""),
    ],
)
def test_subjects_compare_without_reply_prefixes(subject: str | None, expected: str) -> None:
    assert thread_subject(subject) == expected


async def test_a_new_subject_is_a_new_conversation_and_a_reply_joins_it(hub: Hub) -> None:
    first = await hub.ingest(mail("ana@example.com", "<a1@x>", "Invoice 42"))
    other = await hub.ingest(mail("ana@example.com", "<a2@x>", "Password reset"))
    assert other.conversation_id != first.conversation_id
    assert await rule_of(hub, first.message_id) == "new"
    by_header = await hub.ingest(mail("ana@example.com", "<a3@x>", "Something else", in_reply_to="<a1@x>"))
    assert by_header.conversation_id == first.conversation_id
    assert await rule_of(hub, by_header.message_id) == "in_reply_to"
    by_refs = await hub.ingest(mail("ana@example.com", "<a4@x>", "x", references=("<zz@x>", "<a2@x>")))
    assert by_refs.conversation_id == other.conversation_id
    assert await rule_of(hub, by_refs.message_id) == "references"
    by_subject = await hub.ingest(mail("ana@example.com", "<a5@x>", "RE: invoice 42"))
    assert by_subject.conversation_id == first.conversation_id
    assert await rule_of(hub, by_subject.message_id) == "subject"


async def test_outlook_rewritten_headers_still_thread_by_the_reply_tag(hub: Hub) -> None:
    """Outlook drops In-Reply-To and rewrites the subject; the per-conversation address remains."""
    first = await hub.ingest(mail("bo@example.com", "<b1@x>", "Order 7"))
    reply = await hub.ingest(
        mail("bo@example.com", "<b2@x>", "AW: Ihre Bestellung", tag=f"c{first.conversation_id}")
    )
    assert reply.conversation_id == first.conversation_id
    assert await rule_of(hub, reply.message_id) == "reply_tag"
    # A tag naming a conversation of another channel, or none at all, threads nothing.
    stray = await hub.ingest(mail("bo@example.com", "<b3@x>", "New matter", tag="c999999"))
    assert stray.conversation_id != first.conversation_id
    elsewhere = await hub.ingest(
        mail("bo@example.com", "<b4@x>", "Other", tag=f"c{first.conversation_id}", channel="mail-2")
    )
    assert elsewhere.conversation_id != first.conversation_id


async def test_a_reply_from_another_participant_joins_by_header(hub: Hub) -> None:
    first = await hub.ingest(mail("cy@example.com", "<c1@x>", "Contract"))
    colleague = await hub.ingest(mail("dee@example.com", "<c2@x>", "Re: Contract", in_reply_to="<c1@x>"))
    assert colleague.conversation_id == first.conversation_id
    assert colleague.contact_id != first.contact_id


async def test_auto_replies_never_reopen_but_people_do(hub: Hub) -> None:
    first = await hub.ingest(mail("ed@example.com", "<e1@x>", "Refund"))
    await set_status(
        hub, first.conversation_id, ConversationStatus.RESOLVED.value, resolved_ago=timedelta(minutes=5)
    )
    auto = await hub.ingest(
        mail("ed@example.com", "<e2@x>", "Out of office", in_reply_to="<e1@x>", automated=True)
    )
    assert auto.conversation_id == first.conversation_id
    assert await status_of(hub, first.conversation_id) == ConversationStatus.RESOLVED.value
    person = await hub.ingest(mail("ed@example.com", "<e3@x>", "Re: Refund", in_reply_to="<e1@x>"))
    assert person.conversation_id == first.conversation_id
    assert await status_of(hub, first.conversation_id) == ConversationStatus.OPEN.value
    async with hub.db.read() as s:
        reopened = (
            (
                await s.execute(
                    select(Event.data).where(
                        Event.type == "conversation.status_changed",
                        Event.conversation_id == first.conversation_id,
                    )
                )
            )
            .scalars()
            .all()
        )
    assert [d["status"] for d in reopened] == ["open"]


async def test_a_thread_resolved_long_ago_starts_a_new_conversation_that_says_so(hub: Hub) -> None:
    first = await hub.ingest(mail("fay@example.com", "<f1@x>", "Warranty"))
    await set_status(
        hub, first.conversation_id, ConversationStatus.RESOLVED.value, resolved_ago=timedelta(days=60)
    )
    late = await hub.ingest(mail("fay@example.com", "<f2@x>", "Re: Warranty", in_reply_to="<f1@x>"))
    assert late.conversation_id != first.conversation_id
    async with hub.db.read() as s:
        created = (
            await s.execute(
                select(Event.data).where(
                    Event.type == "conversation.created", Event.conversation_id == late.conversation_id
                )
            )
        ).scalar_one()
    assert created["follows"] == first.conversation_id


async def test_replies_to_a_merged_conversation_land_where_it_was_merged(hub: Hub) -> None:
    a = await hub.ingest(mail("gus@example.com", "<g1@x>", "Shipping"))
    b = await hub.ingest(mail("gus@example.com", "<g2@x>", "Delivery"))
    async with hub.db.write() as s:
        await s.execute(
            update(Conversation)
            .where(Conversation.id == b.conversation_id)
            .values(merged_into_id=a.conversation_id)
        )
    reply = await hub.ingest(mail("gus@example.com", "<g3@x>", "Re: Delivery", in_reply_to="<g2@x>"))
    assert reply.conversation_id == a.conversation_id


async def test_one_batch_threads_replies_to_messages_of_the_same_batch(hub: Hub) -> None:
    msgs = [
        mail("hal@example.com", "<h1@x>", "Login"),
        mail("hal@example.com", "<h2@x>", "Re: Login", in_reply_to="<h1@x>"),
        mail("hal@example.com", "<h3@x>", "Login"),
        mail("hal@example.com", "<h4@x>", "Billing"),
    ]
    results = await asyncio.gather(*(hub.ingest(m) for m in msgs))
    assert len({r.conversation_id for r in results[:3]}) == 1
    assert results[3].conversation_id != results[0].conversation_id


async def test_the_whole_original_stays_beside_the_collapsed_text(hub: Hub) -> None:
    full = "Thanks!\n\nOn Mon, Ana wrote:\n> the question"
    stored = await hub.ingest(mail("ivy@example.com", "<i1@x>", "Q", text="Thanks!", full_text=full))
    async with hub.db.read() as s:
        meta = (await s.execute(select(Message.meta).where(Message.id == stored.message_id))).scalar_one()
    assert meta["full_text"] == full and meta["subject"] == "Q"


async def test_chat_still_joins_the_open_conversation(hub: Hub) -> None:
    def chat(n: int) -> InboundMessage:
        return InboundMessage(
            channel="webchat",
            channel_kind="webchat",
            external_id=f"v:{n}",
            identity_kind=IdentityKind.WEBCHAT,
            sender="visitor-1",
            text=f"hi {n}",
        )

    first = await hub.ingest(chat(1))
    second = await hub.ingest(chat(2))
    assert second.conversation_id == first.conversation_id
    assert await rule_of(hub, second.message_id) == "open_conversation"


async def test_a_reply_arriving_during_a_merge_follows_the_merge(hub: Hub) -> None:
    """The merge's transaction is open (rows moved, source pointing at its target) when a reply to
    the source arrives: ingest waits for it and threads into the target, never the emptied source."""
    a = await hub.ingest(mail("jo@example.com", "<j1@x>", "Parcel"))
    b = await hub.ingest(mail("jo@example.com", "<j2@x>", "Tracking"))
    async with hub.db.write() as s:
        await s.execute(
            update(Message)
            .where(Message.conversation_id == b.conversation_id)
            .values(conversation_id=a.conversation_id)
        )
        await s.execute(
            update(Conversation)
            .where(Conversation.id == b.conversation_id)
            .values(
                merged_into_id=a.conversation_id,
                status=ConversationStatus.RESOLVED.value,
                resolved_at=utcnow(),
            )
        )
        reply = asyncio.ensure_future(
            hub.ingest(mail("jo@example.com", "<j3@x>", "Re: Tracking", in_reply_to="<j2@x>"))
        )
        await asyncio.sleep(0.3)
        assert not reply.done()  # waiting for the merge to commit
    result = await reply
    assert result.conversation_id == a.conversation_id
    assert await status_of(hub, b.conversation_id) == ConversationStatus.RESOLVED.value
