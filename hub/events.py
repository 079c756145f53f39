"""The event record and the in-process bus that feeds live websockets.

Every state change appends an immutable row to ``events`` inside the same transaction as the change;
after commit the same records are published on the bus. Signals (typing indicators) are published but
never stored: they are not state.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from hub.model import utcnow
from storage.bulk import insert_rows
from storage.ids import allocate_ids
from storage.models import Event


class EventType(enum.StrEnum):
    MESSAGE_RECEIVED = "message.received"
    MESSAGE_QUEUED = "message.queued"
    MESSAGE_SENT = "message.sent"
    MESSAGE_DELIVERED = "message.delivered"
    MESSAGE_FAILED = "message.failed"
    MESSAGE_RETRYING = "message.retrying"
    CONVERSATION_CREATED = "conversation.created"
    CONVERSATION_ASSIGNED = "conversation.assigned"
    CONVERSATION_STATUS_CHANGED = "conversation.status_changed"
    CONVERSATION_PRIORITY_CHANGED = "conversation.priority_changed"
    NOTE_ADDED = "note.added"
    CONTACT_CREATED = "contact.created"
    CONTACT_MERGED = "contact.merged"
    AGENT_CREATED = "agent.created"


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A stored event (``id`` set) or a live-only signal (``id`` is None)."""

    type: str
    at: datetime
    id: int | None = None
    conversation_id: int | None = None
    contact_id: int | None = None
    message_id: int | None = None
    agent_id: int | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "at": self.at.isoformat(),
            "conversation_id": self.conversation_id,
            "contact_id": self.contact_id,
            "message_id": self.message_id,
            "agent_id": self.agent_id,
            "data": self.data,
        }


def new_event(
    type: EventType | str,
    *,
    at: datetime | None = None,
    conversation_id: int | None = None,
    contact_id: int | None = None,
    message_id: int | None = None,
    agent_id: int | None = None,
    **data: Any,
) -> EventRecord:
    return EventRecord(
        type=str(type),
        at=at or utcnow(),
        conversation_id=conversation_id,
        contact_id=contact_id,
        message_id=message_id,
        agent_id=agent_id,
        data=data,
    )


async def append_events(session: AsyncSession, events: Iterable[EventRecord]) -> list[EventRecord]:
    """Insert events in the caller's transaction; returns them with their ids, in order."""
    pending = list(events)
    if not pending:
        return []
    return await session.run_sync(record_events, pending)


def record_events(session: Session, pending: list[EventRecord]) -> list[EventRecord]:
    """:func:`append_events` for synchronous code (a batch running in :meth:`Database.run_write`)."""
    if not pending:
        return []
    ids = allocate_ids(session, Event, len(pending))
    stored = [replace(e, id=i) for i, e in zip(ids, pending, strict=True)]
    insert_rows(session, Event, [{f: getattr(e, f) for f in _COLUMNS} for e in stored])
    return stored


_COLUMNS = ("id", "type", "at", "conversation_id", "contact_id", "message_id", "agent_id", "data")


def record_from_row(row: Event) -> EventRecord:
    return EventRecord(**{f: getattr(row, f) for f in _COLUMNS if f != "data"}, data=dict(row.data or {}))


class EventBus:
    """Fan-out of committed events to in-process subscribers.

    A slow subscriber never slows the publisher: each has a bounded queue and is dropped (its
    iterator ends) when it overflows, so its websocket closes and the client reloads from the API.
    """

    def __init__(self, queue_size: int = 10_000) -> None:
        self._subscribers: set[asyncio.Queue[EventRecord | None]] = set()
        self._queue_size = queue_size

    def publish(self, events: Iterable[EventRecord]) -> None:
        for event in events:
            for queue in list(self._subscribers):
                try:
                    queue.put_nowait(event)
                except asyncio.QueueFull:
                    self._subscribers.discard(queue)
                    with contextlib.suppress(asyncio.QueueFull):
                        queue.get_nowait()
                        queue.put_nowait(None)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[EventRecord | None]]:
        """A queue of events; ``None`` means the subscriber fell behind and must resynchronise."""
        queue: asyncio.Queue[EventRecord | None] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    def close(self) -> None:
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        self._subscribers.clear()
