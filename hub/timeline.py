"""Reads: conversation lists, a conversation with its messages, contacts and their cross-channel
timeline, the event record. Every read takes the reader's ``Principal`` and filters by it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from hub.access import Principal, may_see_conversation, visible_conversations
from hub.errors import UserError
from hub.events import EventRecord, record_from_row
from hub.model import ConversationStatus, Direction, MessageStatus, TimelineEntry
from storage.engine import Database
from storage.models import Agent, AttachmentRow, Contact, ContactIdentity, Conversation, Event, Message

MAX_PAGE = 200
# Every id column is a signed 64-bit integer. A larger number names nothing, and handed to the
# driver it raises (OverflowError on SQLite, DataError on PostgreSQL) instead of finding nothing.
ID_RANGE = range(-(2**63), 2**63)


def not_found(what: str, ident: int) -> UserError:
    # The same answer whether it does not exist or the caller may not see it: no probing.
    return UserError("not_found", f"no {what} {ident}", status=404)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def message_json(m: Message, attachments: Sequence[AttachmentRow] = ()) -> dict[str, Any]:
    return {
        "id": m.id,
        "conversation_id": m.conversation_id,
        "contact_id": m.contact_id,
        "channel": m.channel,
        "direction": m.direction,
        "status": m.status,
        "text": m.text,
        "html": m.html,
        "author": m.author_name or m.sender or "",
        "agent_id": m.agent_id,
        "sender": m.sender,
        "external_id": m.external_id,
        "created_at": _iso(m.created_at),
        "error": m.error,
        "attachments": [
            {
                "id": a.id,
                "filename": a.filename,
                "content_type": a.content_type,
                "size": a.size,
                "url": f"/api/attachments/{a.id}",
            }
            for a in attachments
        ],
    }


class Timeline:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- conversations ----------------------------------------------------------------------

    async def list_conversations(
        self,
        who: Principal,
        *,
        status: str = "open",
        assignee: str = "all",
        channel: str | None = None,
        before: int | None = None,
        limit: int = 50,
        include_merged: bool = False,
    ) -> dict[str, Any]:
        limit = max(1, min(limit, MAX_PAGE))
        q = select(Conversation).where(visible_conversations(who))
        if not include_merged:
            # A merged conversation is an empty shell pointing at its target: not work to list.
            q = q.where(Conversation.merged_into_id.is_(None))
        if status != "all":
            if status not in {s.value for s in ConversationStatus}:
                raise UserError(
                    "invalid_status", "status must be one of open, pending, snoozed, resolved, all"
                )
            q = q.where(Conversation.status == status)
        if assignee == "me":
            q = q.where(Conversation.assignee_id == who.id)
        elif assignee == "none":
            q = q.where(Conversation.assignee_id.is_(None))
        elif assignee != "all":
            try:
                assignee_id = int(assignee)
            except ValueError:
                assignee_id = ID_RANGE.stop
            if assignee_id not in ID_RANGE:
                raise UserError("invalid_assignee", "assignee must be me, none, all or an agent id")
            q = q.where(Conversation.assignee_id == assignee_id)
        if channel:
            q = q.where(Conversation.channel == channel)
        async with self.db.read() as s:
            if before is not None:
                anchor = (
                    await s.execute(select(Conversation.last_message_at).where(Conversation.id == before))
                ).scalar_one_or_none()
                if anchor is None:
                    raise UserError("invalid_cursor", f"before={before} names no conversation")
                q = q.where(tuple_(Conversation.last_message_at, Conversation.id) < tuple_(anchor, before))
            q = q.order_by(Conversation.last_message_at.desc(), Conversation.id.desc()).limit(limit + 1)
            convs = list((await s.execute(q)).scalars())
            more = len(convs) > limit
            convs = convs[:limit]
            items = await self._summaries(s, convs)
        return {"conversations": items, "next_before": convs[-1].id if more and convs else None}

    async def _summaries(self, s: AsyncSession, convs: Sequence[Conversation]) -> list[dict[str, Any]]:
        if not convs:
            return []
        ids = [c.id for c in convs]
        contacts = {
            r.id: r.name
            for r in await s.execute(
                select(Contact.id, Contact.name).where(Contact.id.in_({c.contact_id for c in convs}))
            )
        }
        agent_ids = {c.assignee_id for c in convs if c.assignee_id is not None}
        agents = (
            {
                r.id: r.name
                for r in await s.execute(select(Agent.id, Agent.name).where(Agent.id.in_(agent_ids)))
            }
            if agent_ids
            else {}
        )
        last_ids = (
            select(func.max(Message.id))
            .where(Message.conversation_id.in_(ids), Message.direction != Direction.NOTE.value)
            .group_by(Message.conversation_id)
        )
        last = {
            r.conversation_id: {"text": r.text[:300], "direction": r.direction, "at": _iso(r.created_at)}
            for r in await s.execute(
                select(Message.conversation_id, Message.text, Message.direction, Message.created_at).where(
                    Message.id.in_(last_ids)
                )
            )
        }
        return [
            {
                "id": c.id,
                "contact": {"id": c.contact_id, "name": contacts.get(c.contact_id) or c.address},
                "channel": c.channel,
                "channel_kind": c.channel_kind,
                "address": c.address,
                "status": c.status,
                "assignee_id": c.assignee_id,
                "assignee": {"id": c.assignee_id, "name": agents.get(c.assignee_id, "")}
                if c.assignee_id is not None
                else None,
                "priority": c.priority,
                "subject": c.subject,
                "created_at": _iso(c.created_at),
                "updated_at": _iso(c.updated_at),
                "last_message_at": _iso(c.last_message_at),
                "resolved_at": _iso(c.resolved_at),
                "last_message": last.get(c.id),
                "queue": c.queue,
                "enqueued_at": _iso(c.enqueued_at),
                "assigned_at": _iso(c.assigned_at),
                "first_reply_at": _iso(c.first_reply_at),
                "offered_to": c.offered_to,
                "offer_expires_at": _iso(c.offer_expires_at),
                "routing_version": c.routing_version,
                "merged_into_id": c.merged_into_id,
            }
            for c in convs
        ]

    async def _visible_conversation(
        self, s: AsyncSession, who: Principal, conversation_id: int
    ) -> Conversation:
        conv = await s.get(Conversation, conversation_id)
        if conv is None or not may_see_conversation(who, conv.assignee_id, conv.queue, conv.offered_to):
            raise not_found("conversation", conversation_id)
        return conv

    async def conversation_summary(self, who: Principal, conversation_id: int) -> dict[str, Any]:
        async with self.db.read() as s:
            conv = await self._visible_conversation(s, who, conversation_id)
            return (await self._summaries(s, [conv]))[0]

    async def conversation(self, who: Principal, conversation_id: int) -> dict[str, Any]:
        async with self.db.read() as s:
            conv = await self._visible_conversation(s, who, conversation_id)
            summary = (await self._summaries(s, [conv]))[0]
            messages = list(
                (
                    await s.execute(
                        select(Message).where(Message.conversation_id == conversation_id).order_by(Message.id)
                    )
                ).scalars()
            )
            return {"conversation": summary, "messages": await self._with_attachments(s, messages)}

    async def _with_attachments(self, s: AsyncSession, messages: Sequence[Message]) -> list[dict[str, Any]]:
        by_message: dict[int, list[AttachmentRow]] = {}
        if messages:
            rows = await s.execute(
                select(AttachmentRow)
                .where(AttachmentRow.message_id.in_([m.id for m in messages]))
                .order_by(AttachmentRow.id)
            )
            for a in rows.scalars():
                by_message.setdefault(a.message_id, []).append(a)
        return [message_json(m, by_message.get(m.id, ())) for m in messages]

    async def attachment(self, who: Principal, attachment_id: int) -> AttachmentRow:
        async with self.db.read() as s:
            row = await s.get(AttachmentRow, attachment_id)
            if row is None:
                raise not_found("attachment", attachment_id)
            message = await s.get(Message, row.message_id)
            assert message is not None
            await self._visible_conversation(s, who, message.conversation_id)
            return row

    # -- contacts ---------------------------------------------------------------------------

    async def _visible_contact(self, s: AsyncSession, who: Principal, contact_id: int) -> Contact:
        contact = await s.get(Contact, contact_id)
        if contact is None:
            raise not_found("contact", contact_id)
        if not who.is_supervisor:
            seen = await s.execute(
                select(Conversation.id)
                .where(Conversation.contact_id == contact_id, visible_conversations(who))
                .limit(1)
            )
            if seen.first() is None:
                raise not_found("contact", contact_id)
        return contact

    async def contact(self, who: Principal, contact_id: int) -> dict[str, Any]:
        async with self.db.read() as s:
            contact = await self._visible_contact(s, who, contact_id)
            identities = (
                await s.execute(
                    select(ContactIdentity.kind, ContactIdentity.value)
                    .where(ContactIdentity.contact_id == contact_id)
                    .order_by(ContactIdentity.id)
                )
            ).all()
            convs = list(
                (
                    await s.execute(
                        select(Conversation)
                        .where(Conversation.contact_id == contact_id, visible_conversations(who))
                        .order_by(Conversation.last_message_at.desc())
                    )
                ).scalars()
            )
            return {
                "contact": {
                    "id": contact.id,
                    "name": contact.name,
                    "attributes": contact.attributes,
                    "identities": [{"kind": k, "value": v} for k, v in identities],
                    "conversations": await self._summaries(s, convs),
                    "created_at": _iso(contact.created_at),
                }
            }

    async def contact_timeline(
        self, who: Principal, contact_id: int, *, before: int | None = None, limit: int = 50
    ) -> dict[str, Any]:
        """Every message of the contact on every channel, newest first, keyset-paged by message id.

        An agent reading a contact they may see gets its whole history: knowing the customer is the
        point; conversations assigned to colleagues are included read-only."""
        limit = max(1, min(limit, MAX_PAGE))
        async with self.db.read() as s:
            await self._visible_contact(s, who, contact_id)
            q = select(Message).where(Message.contact_id == contact_id)
            if before is not None:
                q = q.where(Message.id < before)
            messages = list((await s.execute(q.order_by(Message.id.desc()).limit(limit + 1))).scalars())
            more = len(messages) > limit
            messages = messages[:limit]
            return {
                "messages": await self._with_attachments(s, messages),
                "next_before": messages[-1].id if more and messages else None,
            }

    # -- the event record -------------------------------------------------------------------

    async def events(self, who: Principal, *, after: int = 0, limit: int = 100) -> dict[str, Any]:
        if not who.is_supervisor:
            raise UserError("forbidden", "the event record is for supervisors and admins", status=403)
        limit = max(1, min(limit, 1000))
        async with self.db.read() as s:
            rows = (
                await s.execute(select(Event).where(Event.id > after).order_by(Event.id).limit(limit))
            ).scalars()
            events: list[EventRecord] = [record_from_row(r) for r in rows]
        return {
            "events": [e.as_json() for e in events],
            "next_after": events[-1].id if events else after,
        }

    # -- what a customer-facing channel may show ---------------------------------------------

    async def customer_history(self, channel: str, address: str, limit: int = 100) -> list[TimelineEntry]:
        """The visible messages of this customer's conversations on this channel, oldest first.
        Private notes are never included."""
        async with self.db.read() as s:
            rows = (
                await s.execute(
                    select(Message)
                    .join(Conversation, Conversation.id == Message.conversation_id)
                    .where(
                        Conversation.channel == channel,
                        Conversation.address == address,
                        Message.direction != Direction.NOTE.value,
                    )
                    .order_by(Message.id.desc())
                    .limit(limit)
                )
            ).scalars()
            return [
                TimelineEntry(
                    message_id=m.id,
                    conversation_id=m.conversation_id,
                    direction=Direction(m.direction),
                    text=m.text,
                    author=m.author_name or "",
                    at=m.created_at,
                    status=MessageStatus(m.status),
                )
                for m in reversed(list(rows))
            ]

    async def latest_conversation(self, channel: str, address: str) -> tuple[int, int | None] | None:
        """(conversation id, assignee id) of the customer's newest conversation on this channel."""
        async with self.db.read() as s:
            row = (
                await s.execute(
                    select(Conversation.id, Conversation.assignee_id)
                    .where(and_(Conversation.channel == channel, Conversation.address == address))
                    .order_by(Conversation.id.desc())
                    .limit(1)
                )
            ).first()
        return (row.id, row.assignee_id) if row else None


__all__ = ["ID_RANGE", "Timeline", "message_json", "not_found"]
