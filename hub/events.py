"""The event record and the in-process bus that feeds live websockets.

Every state change appends an immutable row to ``events`` inside the same transaction as the change;
after commit the same records are published on the bus. Signals (typing indicators) are published but
never stored: they are not state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

# The event vocabulary lives in hub.model so that routing, which may not import the rest of the hub,
# can build events too; it is re-exported here for the hub's own modules.
from hub.model import EventRecord, EventType, new_event
from storage.bulk import insert_rows
from storage.ids import allocate_ids
from storage.models import Event

__all__ = ["EventBus", "EventRecord", "EventType", "append_events", "new_event", "record_events"]


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
