"""Writes an agent makes on a conversation: reply, private note, status, assignee, priority.

A reply and its outbox row are committed in one transaction (the durable-outbox invariant); the
dispatcher is only woken afterwards, so a crash at any point leaves either nothing or a row that
will be sent.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

from sqlalchemy import select

from hub.access import Principal, may_see_conversation
from hub.errors import UserError
from hub.events import EventBus, EventRecord, EventType, append_events, new_event
from hub.model import ConversationStatus, Direction, MessageStatus, utcnow
from hub.outbox import enqueue
from hub.timeline import ID_RANGE, message_json, not_found
from hub.types import Assignments
from storage.engine import Database
from storage.models import Agent, Conversation, Message

PRIORITIES = {0: "none", 1: "low", 2: "medium", 3: "high", 4: "urgent"}


def clean_text(text: Any, max_chars: int) -> str:
    if not isinstance(text, str):
        raise UserError("invalid_text", "text must be a string")
    if not text.strip():
        raise UserError("empty_text", "text must not be empty")
    if len(text) > max_chars:
        raise UserError(
            "text_too_long", f"text is {len(text)} characters; the limit is {max_chars}", status=413
        )
    return text


class Conversations:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        wake_outbox: Callable[[], None],
        max_chars: int,
        assignments: Assignments,
    ) -> None:
        self.db = db
        self.bus = bus
        self.wake_outbox = wake_outbox
        self.max_chars = max_chars
        self.assignments = assignments

    async def _assign(
        self, s: Any, conv: Conversation, agent_id: int | None, who: Principal, now: datetime, reason: str
    ) -> list[EventRecord]:
        """Change the owner through the router's claim path (capacity, one owner, events)."""
        previous = conv.assignee_id
        events: list[EventRecord] = await s.run_sync(
            lambda session: self.assignments.assign(
                session,
                conv.id,
                agent_id,
                by=who.id,
                reason=reason,
                expected_assignee=previous,
                now=now,
            )
        )
        conv.assignee_id = agent_id
        return events

    async def _load(
        self, s: Any, who: Principal, conversation_id: int, *, lock: bool = False
    ) -> Conversation:
        q = select(Conversation).where(Conversation.id == conversation_id)
        if lock and not self.db.is_sqlite:
            q = q.with_for_update()
        conv = (await s.execute(q)).scalar_one_or_none()
        if conv is None or not may_see_conversation(who, conv.assignee_id, conv.queue, conv.offered_to):
            raise not_found("conversation", conversation_id)
        return conv

    async def reply(self, who: Principal, conversation_id: int, text: Any) -> dict[str, Any]:
        text = clean_text(text, self.max_chars)
        now = utcnow()
        async with self.db.write() as s:
            conv = await self._load(s, who, conversation_id, lock=True)
            pending: list[EventRecord] = []
            if conv.assignee_id is None:
                # Answering an unassigned conversation takes it, as in every shared inbox.
                pending += await self._assign(s, conv, who.id, who, now, reason="replied")
            if conv.first_reply_at is None:
                conv.first_reply_at = now
            message = _agent_message(conv, who, Direction.OUT, MessageStatus.QUEUED, text, now)
            s.add(message)
            conv.updated_at = now
            conv.last_message_at = now
            await s.flush()
            await enqueue(s, message.id, conv.channel, now)
            pending.append(
                new_event(
                    EventType.MESSAGE_QUEUED,
                    at=now,
                    conversation_id=conv.id,
                    contact_id=conv.contact_id,
                    message_id=message.id,
                    agent_id=who.id,
                    channel=conv.channel,
                    assignee_id=conv.assignee_id,
                    text=text[:500],
                )
            )
            events = await append_events(s, pending)
        self.bus.publish(events)
        self.wake_outbox()
        return {"message": message_json(message)}

    async def note(self, who: Principal, conversation_id: int, text: Any) -> dict[str, Any]:
        text = clean_text(text, self.max_chars)
        now = utcnow()
        async with self.db.write() as s:
            conv = await self._load(s, who, conversation_id)
            message = _agent_message(conv, who, Direction.NOTE, MessageStatus.NOTE, text, now)
            s.add(message)
            conv.updated_at = now
            await s.flush()
            events = await append_events(
                s,
                [
                    new_event(
                        EventType.NOTE_ADDED,
                        at=now,
                        conversation_id=conv.id,
                        contact_id=conv.contact_id,
                        message_id=message.id,
                        agent_id=who.id,
                        assignee_id=conv.assignee_id,
                    )
                ],
            )
        self.bus.publish(events)
        return {"message": message_json(message)}

    async def update(self, who: Principal, conversation_id: int, changes: dict[str, Any]) -> None:
        unknown = set(changes) - {"status", "assignee_id", "priority"}
        if unknown:
            raise UserError("unknown_field", f"cannot change {', '.join(sorted(unknown))}")
        if not changes:
            raise UserError("empty_patch", "give at least one of status, assignee_id, priority")
        status = changes.get("status")
        # The type check comes first: a list or an object is unhashable and `in` on a set would raise.
        if "status" in changes and (
            type(status) is not str or status not in {s.value for s in ConversationStatus}
        ):
            raise UserError("invalid_status", "status must be one of open, pending, snoozed, resolved")
        priority = changes.get("priority")
        if "priority" in changes and (type(priority) is not int or priority not in PRIORITIES):
            raise UserError("invalid_priority", "priority must be an integer from 0 (none) to 4 (urgent)")
        assignee = changes.get("assignee_id")
        if (
            "assignee_id" in changes
            and assignee is not None
            and (type(assignee) is not int or assignee not in ID_RANGE)
        ):
            raise UserError("invalid_assignee", "assignee_id must be an agent id or null")
        now = utcnow()
        async with self.db.write() as s:
            conv = await self._load(s, who, conversation_id, lock=True)
            pending: list[EventRecord] = []
            if "assignee_id" in changes and assignee != conv.assignee_id:
                if not who.is_supervisor and assignee not in (None, who.id):
                    raise UserError(
                        "forbidden", "agents can assign conversations only to themselves", status=403
                    )
                if not who.is_supervisor and assignee is None and conv.assignee_id != who.id:
                    raise UserError("forbidden", "only the assignee or a supervisor can unassign", status=403)
                if assignee is not None:
                    found = await s.execute(select(Agent.id).where(Agent.id == assignee, Agent.active))
                    if found.first() is None:
                        raise UserError("unknown_agent", f"no active agent {assignee}", status=422)
                pending += await self._assign(s, conv, assignee, who, now, reason="manual")
            if "status" in changes and status != conv.status:
                previous_status = conv.status
                conv.status = str(status)
                conv.resolved_at = now if status == ConversationStatus.RESOLVED.value else None
                pending.append(
                    new_event(
                        EventType.CONVERSATION_STATUS_CHANGED,
                        at=now,
                        conversation_id=conv.id,
                        contact_id=conv.contact_id,
                        agent_id=who.id,
                        previous=previous_status,
                        status=status,
                        assignee_id=conv.assignee_id,
                    )
                )
                await s.flush()
                pending += await s.run_sync(
                    lambda session: self.assignments.status_changed(session, conv.id, str(status), now=now)
                )
            if "priority" in changes and priority != conv.priority:
                pending.append(
                    new_event(
                        EventType.CONVERSATION_PRIORITY_CHANGED,
                        at=now,
                        conversation_id=conv.id,
                        contact_id=conv.contact_id,
                        agent_id=who.id,
                        previous=conv.priority,
                        priority=priority,
                        assignee_id=conv.assignee_id,
                    )
                )
                conv.priority = int(cast(int, priority))
            conv.updated_at = now
            events = await append_events(s, pending)
        self.bus.publish(events)
        self.assignments.wake()


def _agent_message(
    conv: Conversation, who: Principal, direction: Direction, status: MessageStatus, text: str, now: datetime
) -> Message:
    return Message(
        conversation_id=conv.id,
        contact_id=conv.contact_id,
        channel=conv.channel,
        external_id=None,
        direction=direction.value,
        status=status.value,
        agent_id=who.id,
        sender=None,
        author_name=who.name,
        text=text,
        html=None,
        error=None,
        meta={},
        created_at=now,
    )
