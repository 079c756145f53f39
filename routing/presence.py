"""Agent presence: what the agent chose (status) and whether an inbox of theirs is open (heartbeats).

An agent is *online* while they chose online and a heartbeat is fresher than the timeout; *away*
while they chose away and are connected; otherwise *offline*. The effective value is stored in
``agents.presence`` by whichever process observes a change first (a conditional UPDATE, so each
change is one event even with many processes), with ``presence_changed_at`` starting grace periods.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from hub.model import EventRecord, EventType, new_event
from routing.model import Presence
from storage.models import Agent

STATUSES = frozenset(p.value for p in Presence)


def effective(status: str, presence_at: datetime | None, now: datetime, timeout: float) -> Presence:
    if status == Presence.OFFLINE or presence_at is None:
        return Presence.OFFLINE
    if presence_at < now - timedelta(seconds=timeout):
        return Presence.OFFLINE
    return Presence(status)


@dataclass(frozen=True, slots=True)
class Change:
    agent_id: int
    previous: Presence
    presence: Presence


def observe(
    s: Session, now: datetime, timeout: float, agent_ids: list[int] | None = None
) -> tuple[list[Change], list[EventRecord]]:
    """Record every agent whose effective presence differs from the stored one."""
    query = select(Agent.id, Agent.status, Agent.presence, Agent.presence_at).where(Agent.active)
    if agent_ids is not None:
        query = query.where(Agent.id.in_(agent_ids))
    changes: list[Change] = []
    events: list[EventRecord] = []
    differing = [
        (row, now_is)
        for row in s.execute(query)
        if (now_is := effective(row.status, row.presence_at, now, timeout)) != row.presence
    ]
    if not differing:
        return changes, events
    # Rows another transaction holds are left to it (or to the next round): never wait on them.
    free = set(
        s.execute(
            select(Agent.id)
            .where(Agent.id.in_(sorted(row.id for row, _ in differing)))
            .order_by(Agent.id)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    for row, now_is in differing:
        if row.id not in free:
            continue
        done = s.execute(
            update(Agent)
            .where(Agent.id == row.id, Agent.presence == row.presence)
            .values(presence=now_is.value, presence_changed_at=now)
            .execution_options(synchronize_session=False)
        )
        if cast(CursorResult[Any], done).rowcount != 1:
            continue  # another process recorded it first
        change = Change(row.id, Presence(row.presence), now_is)
        changes.append(change)
        events.append(
            new_event(
                EventType.AGENT_PRESENCE_CHANGED,
                at=now,
                agent_id=row.id,
                previous=change.previous.value,
                presence=now_is.value,
                status=row.status,
            )
        )
    return changes, events


def heartbeat(s: Session, agent_id: int, now: datetime, *, connected: bool, timeout: float) -> None:
    """An inbox of the agent is open (``connected``) or its last one closed."""
    value = now if connected else now - timedelta(seconds=timeout + 1)
    s.execute(
        update(Agent)
        .where(Agent.id == agent_id)
        .values(presence_at=value)
        .execution_options(synchronize_session=False)
    )


def choose(s: Session, agent_id: int, status: str) -> None:
    s.execute(
        update(Agent)
        .where(Agent.id == agent_id)
        .values(status=status)
        .execution_options(synchronize_session=False)
    )
