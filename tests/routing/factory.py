"""Rows for routing tests, written straight to the database with exact values."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

from hub.model import utcnow
from storage.engine import Database
from storage.models import Agent, Contact, Conversation

_serial = itertools.count(1)


async def add_agent(db: Database, **fields: Any) -> int:
    n = next(_serial)
    values: dict[str, Any] = {
        "email": f"agent{n}@example.com",
        "name": f"Agent {n}",
        "role": "agent",
        "password_hash": "-",
        "created_at": utcnow(),
        "capacity": 100,
        "load": 0,
        "skills": {},
        "channel_kinds": [],
        "status": "online",
        "presence": "online",
        "presence_at": utcnow(),
    }
    values.update(fields)
    async with db.write() as s:
        agent = Agent(**values)
        s.add(agent)
        await s.flush()
        return agent.id


async def add_conversation(
    db: Database,
    *,
    channel_kind: str = "webchat",
    status: str = "open",
    contact_id: int | None = None,
    at: datetime | None = None,
    **fields: Any,
) -> int:
    now = at or utcnow()
    async with db.write() as s:
        if contact_id is None:
            contact = Contact(name="Customer", attributes={}, created_at=now, updated_at=now)
            s.add(contact)
            await s.flush()
            contact_id = contact.id
        conv = Conversation(
            contact_id=contact_id,
            channel=channel_kind,
            channel_kind=channel_kind,
            address=f"visitor-{next(_serial)}",
            status=status,
            priority=0,
            created_at=now,
            updated_at=now,
            last_message_at=now,
            **fields,
        )
        s.add(conv)
        await s.flush()
        return conv.id


async def agent_row(db: Database, agent_id: int) -> Agent:
    async with db.read() as s:
        found = await s.get(Agent, agent_id)
        assert found is not None
        return found


async def conversation_row(db: Database, conversation_id: int) -> Conversation:
    async with db.read() as s:
        found = await s.get(Conversation, conversation_id)
        assert found is not None
        return found
