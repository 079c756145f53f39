"""What channels report besides new messages: delivery reports on outbound messages (bounces,
status callbacks), inbound messages they had to refuse, and audits of what the hub holds.

Each report is committed with its event, so the timeline and the event record tell the same story.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from hub.events import EventBus, append_events
from hub.model import Direction, EventRecord, EventType, MessageStatus, new_event, utcnow
from storage.engine import Database
from storage.ids import allocate_ids
from storage.models import Conversation, Message, Refusal

log = logging.getLogger(__name__)

# A delivery report moves a message forward only; a failure is final from any state but "read".
_ORDER = {MessageStatus.QUEUED: 0, MessageStatus.SENT: 1, MessageStatus.DELIVERED: 2, MessageStatus.READ: 3}
_EVENT = {
    MessageStatus.SENT: EventType.MESSAGE_SENT,
    MessageStatus.DELIVERED: EventType.MESSAGE_DELIVERED,
    MessageStatus.READ: EventType.MESSAGE_READ,
    MessageStatus.FAILED: EventType.MESSAGE_FAILED,
}
_LOOKUP_CHUNK = 500


def moves_forward(current: str, new: MessageStatus) -> bool:
    """Whether a report of ``new`` changes a message now ``current`` (reports arrive out of order)."""
    if current == new.value:
        return False
    if new is MessageStatus.FAILED:
        return current != MessageStatus.READ.value
    if current == MessageStatus.FAILED.value:
        return False
    return _ORDER.get(new, -1) > _ORDER.get(MessageStatus(current), -1)


class ChannelReports:
    def __init__(self, db: Database, bus: EventBus) -> None:
        self.db = db
        self.bus = bus

    async def delivery_update(
        self, channel: str, external_id: str, status: MessageStatus, reason: str | None = None
    ) -> int | None:
        async with self.db.write() as s:
            row = (
                await s.execute(
                    select(Message.id, Message.status, Message.conversation_id, Message.contact_id).where(
                        Message.channel == channel,
                        Message.external_id == external_id,
                        Message.direction == Direction.OUT.value,
                    )
                )
            ).one_or_none()
            if row is None:
                log.info("%s: delivery report for unknown message %s", channel, external_id)
                return None
            if not moves_forward(row.status, status):
                return int(row.id)
            await s.execute(
                update(Message)
                .where(Message.id == row.id)
                .values(status=status.value, error=reason if status is MessageStatus.FAILED else None)
            )
            assignee = (
                await s.execute(
                    select(Conversation.assignee_id).where(Conversation.id == row.conversation_id)
                )
            ).scalar_one_or_none()
            data: dict[str, Any] = {"channel": channel, "status": status.value, "assignee_id": assignee}
            if reason:
                data["error" if status is MessageStatus.FAILED else "detail"] = reason
            stored = await append_events(
                s,
                [
                    new_event(
                        _EVENT[status],
                        conversation_id=row.conversation_id,
                        contact_id=row.contact_id,
                        message_id=row.id,
                        **data,
                    )
                ],
            )
        self.bus.publish(stored)
        return int(row.id)

    async def refused(
        self, channel: str, external_id: str | None, reason: str, *, sender: str | None = None
    ) -> None:
        log.warning("%s refused message %s: %s", channel, external_id or "(no id)", reason)
        now = utcnow()
        async with self.db.write() as s:
            if external_id:
                insert = sqlite_insert if self.db.is_sqlite else pg_insert
                (new_id,) = await s.run_sync(lambda session: allocate_ids(session, Refusal, 1))
                await s.execute(
                    insert(Refusal)
                    .values(
                        id=new_id,
                        channel=channel,
                        external_id=external_id[:500],
                        sender=(sender or "")[:320] or None,
                        reason=reason,
                        at=now,
                    )
                    .on_conflict_do_nothing(index_elements=["channel", "external_id"])
                )
            stored = await append_events(
                s,
                [
                    new_event(
                        EventType.MESSAGE_REFUSED,
                        at=now,
                        channel=channel,
                        external_id=external_id,
                        sender=sender,
                        reason=reason,
                    )
                ],
            )
        self.bus.publish(stored)

    async def known_ids(self, channel: str, external_ids: Collection[str]) -> set[str]:
        wanted = list(dict.fromkeys(external_ids))
        known: set[str] = set()
        async with self.db.read() as s:
            for start in range(0, len(wanted), _LOOKUP_CHUNK):
                chunk = wanted[start : start + _LOOKUP_CHUNK]
                for model in (Message, Refusal):
                    rows = await s.execute(
                        select(model.external_id).where(
                            model.channel == channel, model.external_id.in_(chunk)
                        )
                    )
                    known.update(r for r in rows.scalars() if r is not None)
        return known

    async def record(self, events: list[EventRecord]) -> None:
        async with self.db.write() as s:
            stored = await append_events(s, events)
        self.bus.publish(stored)
