"""Who may see what. Every request and websocket message goes through these checks, server-side.

* admin and supervisor: every conversation, contact and event.
* agent: conversations assigned or offered to them, and unassigned ones waiting in the queues they
  serve (or in no queue); a contact when they may see at least one of its conversations; live events
  of those conversations only; not the raw event export.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, true

from hub.events import EventRecord
from hub.model import Role
from storage.models import Conversation


@dataclass(frozen=True, slots=True)
class Principal:
    id: int
    email: str
    name: str
    role: Role
    # The queues whose unassigned conversations this agent may see (those they have the skills and
    # channels for); None: every unassigned conversation.
    queues: frozenset[str] | None = None

    @property
    def is_supervisor(self) -> bool:
        return self.role in (Role.SUPERVISOR, Role.ADMIN)

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "email": self.email, "name": self.name, "role": self.role.value}


def visible_conversations(who: Principal) -> ColumnElement[bool]:
    """A WHERE clause selecting the conversations ``who`` may read."""
    if who.is_supervisor:
        return true()
    unassigned: ColumnElement[bool] = Conversation.assignee_id.is_(None)
    if who.queues is not None:
        unassigned = and_(
            unassigned, or_(Conversation.queue.is_(None), Conversation.queue.in_(sorted(who.queues)))
        )
    return or_(unassigned, Conversation.assignee_id == who.id, Conversation.offered_to == who.id)


def may_see_conversation(
    who: Principal, assignee_id: int | None, queue: str | None = None, offered_to: int | None = None
) -> bool:
    if who.is_supervisor or assignee_id == who.id or offered_to == who.id:
        return True
    if assignee_id is not None:
        return False
    return who.queues is None or queue is None or queue in who.queues


def may_see_event(who: Principal, event: EventRecord) -> bool:
    if who.is_supervisor:
        return True
    if event.conversation_id is None:
        return event.agent_id == who.id
    data = event.data
    if data.get("previous_assignee_id") == who.id:
        return True  # so the agent's inbox learns that the conversation went elsewhere
    if data.get("offered_to") == who.id:
        return True
    if "assignee_id" not in data:
        return False
    return may_see_conversation(who, data["assignee_id"], data.get("queue"))
