"""The queues in force: rows of the ``queues`` table, seeded from the routing file, editable by admins.

Every hub process reads the same rows, so an edit through the API reaches every router at its next
round. Rows are read again only when one changed (count and newest ``updated_at``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update

from hub.model import Refused, utcnow
from routing.config import queue_from_dict, queue_to_dict
from routing.model import QueueSpec
from storage.engine import Database
from storage.models import Conversation, QueueRow, QueueWait


class QueueStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._stamp: tuple[int, datetime | None] | None = None
        self._queues: list[QueueSpec] = []

    async def seed(self, specs: Sequence[QueueSpec]) -> list[str]:
        """Create the file's queues that the database lacks; existing rows (maybe edited) win."""
        async with self.db.write() as s:
            have = set((await s.execute(select(QueueRow.name))).scalars())
            last = (await s.execute(select(func.max(QueueRow.position)))).scalar() or 0
            added = []
            for spec in specs:
                if spec.name in have:
                    continue
                last += 1
                s.add(QueueRow(name=spec.name, position=last, spec=queue_to_dict(spec), updated_at=utcnow()))
                added.append(spec.name)
        self._stamp = None
        return added

    async def current(self) -> list[QueueSpec]:
        """The queues in match order (first match wins)."""
        async with self.db.read() as s:
            stamp = (await s.execute(select(func.count(), func.max(QueueRow.updated_at)))).one()
            if self._stamp == tuple(stamp):
                return self._queues
            rows = (await s.execute(select(QueueRow).order_by(QueueRow.position, QueueRow.name))).scalars()
            self._queues = [queue_from_dict({**row.spec, "name": row.name}) for row in rows]
            self._stamp = (stamp[0], stamp[1])
        return self._queues

    async def put(self, name: str, body: dict[str, Any], position: int | None = None) -> QueueSpec:
        """Create or replace one queue from its JSON form; refuses what the router could not use."""
        try:
            spec = queue_from_dict({**body, "name": name})
        except (ValueError, TypeError) as exc:
            raise Refused("invalid_queue", str(exc), status=422) from None
        known = {q.name for q in await self.current()} | {name}
        for step in spec.steps:
            if step.overflow_to is not None and step.overflow_to not in known:
                raise Refused(
                    "invalid_queue",
                    f"overflow_to names {step.overflow_to!r}, which is not a queue",
                    status=422,
                )
        async with self.db.write() as s:
            row = await s.get(QueueRow, name)
            if row is None:
                last = (await s.execute(select(func.max(QueueRow.position)))).scalar() or 0
                row = QueueRow(name=name, position=last + 1)
                s.add(row)
            if position is not None:
                row.position = position
            row.spec = queue_to_dict(spec)
            row.updated_at = utcnow()
        self._stamp = None
        return spec

    @staticmethod
    def as_json(spec: QueueSpec) -> dict[str, Any]:
        return queue_to_dict(spec)

    async def delete(self, name: str) -> bool:
        """Remove a queue; what waits in it leaves the queue and is matched again by the router."""
        now = utcnow()
        async with self.db.write() as s:
            done = await s.execute(delete(QueueRow).where(QueueRow.name == name))
            waiting = (
                select(Conversation.id)
                .where(Conversation.queue == name, Conversation.enqueued_at.is_not(None))
                .where(Conversation.assignee_id.is_(None), Conversation.offered_to.is_(None))
            )
            await s.execute(
                update(QueueWait)
                .where(QueueWait.queue == name, QueueWait.ended_at.is_(None))
                .where(QueueWait.conversation_id.in_(waiting))
                .values(ended_at=now, outcome="moved")
            )
            await s.execute(
                update(Conversation)
                .where(Conversation.id.in_(waiting.scalar_subquery()))
                .values(queue=None, enqueued_at=None, routing_version=Conversation.routing_version + 1)
                .execution_options(synchronize_session=False)
            )
        self._stamp = None
        return bool(getattr(done, "rowcount", 0))
