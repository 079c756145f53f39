"""The one claim path: every change of who owns a conversation goes through these functions.

The router, manual claims, transfers, offers, replies and status changes all call them inside the
caller's write transaction, so the guarantees live in the database and hold across processes:

* **One owner.** A conversation has one ``assignee_id`` column, changed only after its row is locked
  (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's single writer serialises everything) and checked
  against the ``routing_version`` the decision was made on.
* **Capacity.** ``agents.load`` is a ledger of the units an agent's conversations hold. It grows
  only through ``UPDATE ... SET load = load + cost WHERE load + cost <= capacity`` (a full agent is a
  refused claim) and a CHECK constraint makes an overrun impossible whatever the code does. Each
  conversation remembers what it took (``assigned_cost``) and gives back exactly that.
* **Locks in one order.** A conversation row first, then agent rows in id order. The router passes
  ``wait=False`` and skips rows another transaction holds (``SKIP LOCKED``) instead of waiting, so a
  batch of router claims never waits while holding locks and cannot deadlock with anyone.

Every function returns the events it caused (unsaved); the caller records them in the same
transaction and publishes them after commit. A refusal raises :class:`hub.model.Refused` before
anything was written, so a batch may catch it and go on.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Row, Table, insert, select, update
from sqlalchemy.orm import Session

from hub.model import ConversationStatus, EventRecord, EventType, Refused, new_event
from routing.decide import channel_cost
from routing.model import UNKNOWN_CHANNEL_COST
from storage.ids import allocate_ids
from storage.models import Agent, Conversation, QueueWait

# A conversation holds its assignee's capacity in these states; resolving gives it back.
HOLDS_CAPACITY = frozenset(
    {ConversationStatus.OPEN.value, ConversationStatus.PENDING.value, ConversationStatus.SNOOZED.value}
)
DEFAULT_COST = UNKNOWN_CHANNEL_COST

# Statements are built on the tables (SQLAlchemy Core), not the ORM classes: the claim path runs
# thousands of times a second and the ORM's bulk-update machinery would cost more than the SQL.
_AGENTS = cast(Table, Agent.__table__)
_CONVERSATIONS = cast(Table, Conversation.__table__)
_WAITS = cast(Table, QueueWait.__table__)
_A = _AGENTS.c
_CONV = _CONVERSATIONS.c
_W = _WAITS.c
_CONV_COLUMNS = (
    _CONV.id,
    _CONV.contact_id,
    _CONV.channel,
    _CONV.channel_kind,
    _CONV.status,
    _CONV.assignee_id,
    _CONV.assigned_cost,
    _CONV.queue,
    _CONV.enqueued_at,
    _CONV.offered_to,
    _CONV.declined_by,
    _CONV.routing_version,
    _CONV.priority,
)


def cost_of(costs: Mapping[str, int], channel_kind: str) -> int:
    """What a conversation of this kind takes from its agent (the decision code's own rule)."""
    return channel_cost(channel_kind, costs)


class Busy(Refused):
    """Another transaction holds the row; the router skips the decision and retries next round."""

    def __init__(self, what: str) -> None:
        super().__init__("busy", f"{what} is being changed by another transaction", status=409)


def lock_conversation(s: Session, conversation_id: int, *, wait: bool = True) -> Any:
    """The conversation's routing fields, locked for the rest of the transaction."""
    query = select(*_CONV_COLUMNS).where(_CONV.id == conversation_id).with_for_update(skip_locked=not wait)
    row = s.execute(query).one_or_none()
    if row is None:
        if not wait and s.execute(select(_CONV.id).where(_CONV.id == conversation_id)).first():
            raise Busy(f"conversation {conversation_id}")
        raise Refused("not_found", f"no conversation {conversation_id}", status=404)
    return row


def _lock_agents(s: Session, agent_ids: list[int], *, wait: bool) -> None:
    """Lock agent rows in id order (PostgreSQL; a no-op on SQLite) so two transfers cannot deadlock."""
    if s.get_bind().dialect.name == "sqlite" or not agent_ids:
        return
    ids = sorted(set(agent_ids))
    got = s.execute(
        select(Agent.id).where(Agent.id.in_(ids)).order_by(Agent.id).with_for_update(skip_locked=not wait)
    ).scalars()
    if not wait and len(list(got)) < len(ids):
        raise Busy("an agent")


def _rowcount(result: Any) -> int:
    return cast(CursorResult[Any], result).rowcount


def charge(s: Session, agent_id: int, cost: int, now: datetime) -> None:
    """Take ``cost`` units of the agent's capacity, or refuse with the reason."""
    done = s.execute(
        update(_AGENTS)
        .where(_A.id == agent_id, _A.active, _A.load + cost <= _A.capacity)
        .values(load=_A.load + cost, last_assigned_at=now)
    )
    if _rowcount(done) == 1:
        return
    agent = s.execute(
        select(Agent.name, Agent.load, Agent.capacity, Agent.active).where(Agent.id == agent_id)
    ).one_or_none()
    if agent is None or not agent.active:
        raise Refused("unknown_agent", f"no active agent {agent_id}", status=422)
    raise Refused(
        "no_capacity",
        f"{agent.name} is at capacity ({agent.load}+{cost} > {agent.capacity}); "
        "resolve or hand over a conversation, or raise their capacity",
    )


def credit(s: Session, agent_id: int | None, cost: int) -> None:
    """Give back what a conversation held."""
    if agent_id is None or cost <= 0:
        return
    s.execute(update(_AGENTS).where(_A.id == agent_id).values(load=_A.load - cost))


def _update_conversation(s: Session, row: Row[Any], now: datetime, **values: Any) -> None:
    """Write routing fields, fenced by the version read under lock, and bump the version."""
    done = s.execute(
        update(_CONVERSATIONS)
        .where(_CONV.id == row.id, _CONV.routing_version == row.routing_version)
        .values(routing_version=row.routing_version + 1, updated_at=now, **values)
    )
    if _rowcount(done) != 1:  # cannot happen under the lock; refuse rather than guess
        raise Refused("conflict", f"conversation {row.id} changed meanwhile; reload", status=409)


def _end_wait(
    s: Session, conversation_id: int, now: datetime, outcome: str, agent_id: int | None
) -> float | None:
    """Close the conversation's open queue stay; returns how long it waited."""
    started = s.execute(
        update(_WAITS)
        .where(_W.conversation_id == conversation_id, _W.ended_at.is_(None))
        .values(ended_at=now, outcome=outcome, agent_id=agent_id)
        .returning(_W.enqueued_at)
    ).scalar()
    if started is None:
        return None
    return max(0.0, (now - started).total_seconds())


def _assigned(
    row: Row[Any],
    now: datetime,
    *,
    to: int | None,
    reason: str,
    by: int | None,
    **data: Any,
) -> EventRecord:
    return new_event(
        EventType.CONVERSATION_ASSIGNED,
        at=now,
        conversation_id=row.id,
        contact_id=row.contact_id,
        agent_id=by if by is not None else to,
        assignee_id=to,
        previous_assignee_id=row.assignee_id,
        reason=reason,
        queue=row.queue,
        **data,
    )


def assign(
    s: Session,
    conversation_id: int,
    agent_id: int,
    *,
    costs: Mapping[str, int],
    now: datetime,
    reason: str,
    by: int | None = None,
    expected_version: int | None = None,
    decision: Mapping[str, Any] | None = None,
    wait: bool = True,
) -> list[EventRecord]:
    """Make ``agent_id`` the owner: from the queue, from an offer to someone else, or from another
    agent (a transfer). Refuses when the agent lacks room or the conversation moved on."""
    row = lock_conversation(s, conversation_id, wait=wait)
    if expected_version is not None and row.routing_version != expected_version:
        raise Refused("conflict", f"conversation {conversation_id} moved on; reload", status=409)
    if row.assignee_id == agent_id and (row.assigned_cost > 0 or row.status not in HOLDS_CAPACITY):
        return []
    if row.offered_to == agent_id:
        return accept(s, conversation_id, agent_id, version=None, now=now)
    holds = row.status in HOLDS_CAPACITY
    cost = cost_of(costs, row.channel_kind) if holds else 0
    _lock_agents(s, [a for a in (agent_id, row.assignee_id, row.offered_to) if a is not None], wait=wait)
    if cost:
        charge(s, agent_id, cost, now)  # first: a refusal leaves nothing written
    credit(s, row.assignee_id, row.assigned_cost)
    credit(s, row.offered_to, row.assigned_cost if row.offered_to is not None else 0)
    waited = _end_wait(s, row.id, now, "answered", agent_id)
    _update_conversation(
        s,
        row,
        now,
        assignee_id=agent_id,
        assigned_cost=cost,
        assigned_at=now,
        enqueued_at=None,
        offered_to=None,
        offer_expires_at=None,
        declined_by=[],
    )
    extra: dict[str, Any] = {"cost": cost}
    if row.offered_to is not None:
        extra["offered_to"] = row.offered_to  # so the agent it was offered to learns it went elsewhere
    if waited is not None:
        extra["wait_seconds"] = round(waited, 3)
    if decision is not None:
        extra["decision"] = dict(decision)
    return [_assigned(row, now, to=agent_id, reason=reason, by=by, **extra)]


def enqueue(
    s: Session,
    conversation_id: int,
    queue: str,
    *,
    now: datetime,
    reason: str,
    by: int | None = None,
    wait: bool = True,
    **data: Any,
) -> list[EventRecord]:
    """Put an unowned conversation into ``queue`` (or move a waiting one there); its wait starts now."""
    row = lock_conversation(s, conversation_id, wait=wait)
    if row.assignee_id is not None or row.offered_to is not None:
        raise Refused(
            "conflict", f"conversation {conversation_id} has an owner; unassign it first", status=409
        )
    if row.status not in HOLDS_CAPACITY:
        return []
    if row.enqueued_at is not None and row.queue == queue:
        return []
    _end_wait(s, row.id, now, "moved", None)
    (wait_id,) = allocate_ids(s, QueueWait, 1)
    s.execute(
        insert(_WAITS).values(
            id=wait_id,
            conversation_id=row.id,
            queue=queue,
            channel_kind=row.channel_kind,
            priority=row.priority,
            enqueued_at=now,
        )
    )
    _update_conversation(s, row, now, queue=queue, enqueued_at=now, declined_by=[])
    return [
        new_event(
            EventType.CONVERSATION_QUEUED,
            at=now,
            conversation_id=row.id,
            contact_id=row.contact_id,
            agent_id=by,
            queue=queue,
            previous_queue=row.queue if row.enqueued_at is not None else None,
            reason=reason,
            assignee_id=None,
            **data,
        )
    ]


def unassign(
    s: Session,
    conversation_id: int,
    *,
    now: datetime,
    reason: str,
    by: int | None = None,
    to_queue: str | None = None,
    expected_assignee: int | None = None,
    wait: bool = True,
) -> list[EventRecord]:
    """Take the conversation from its owner and, while it is active, put it back in a queue (the
    given one, else its own; with neither the router's matching picks one)."""
    row = lock_conversation(s, conversation_id, wait=wait)
    if expected_assignee is not None and row.assignee_id != expected_assignee:
        raise Refused(
            "conflict", f"conversation {conversation_id} was reassigned meanwhile; reload", status=409
        )
    if row.assignee_id is None:
        if to_queue is None:
            return []
        return enqueue(s, conversation_id, to_queue, now=now, reason=reason, by=by, wait=wait)
    _lock_agents(s, [row.assignee_id], wait=wait)
    credit(s, row.assignee_id, row.assigned_cost)
    queue = to_queue or row.queue
    values: dict[str, Any] = {"assignee_id": None, "assigned_cost": 0, "assigned_at": None}
    events = [_assigned(row, now, to=None, reason=reason, by=by)]
    _update_conversation(s, row, now, **values)
    if row.status in HOLDS_CAPACITY and queue is not None:
        events += enqueue(s, conversation_id, queue, now=now, reason=reason, by=by, wait=wait)
    return events


def offer(
    s: Session,
    conversation_id: int,
    agent_id: int,
    *,
    costs: Mapping[str, int],
    now: datetime,
    expires_at: datetime,
    expected_version: int | None = None,
    decision: Mapping[str, Any] | None = None,
    wait: bool = True,
) -> list[EventRecord]:
    """Offer a waiting conversation to an agent, reserving the capacity it would take."""
    row = lock_conversation(s, conversation_id, wait=wait)
    if expected_version is not None and row.routing_version != expected_version:
        raise Refused("conflict", f"conversation {conversation_id} moved on", status=409)
    if row.assignee_id is not None or row.offered_to is not None or row.enqueued_at is None:
        raise Refused("conflict", f"conversation {conversation_id} is not waiting", status=409)
    cost = cost_of(costs, row.channel_kind)
    _lock_agents(s, [agent_id], wait=wait)
    charge(s, agent_id, cost, now)
    _update_conversation(s, row, now, offered_to=agent_id, offer_expires_at=expires_at, assigned_cost=cost)
    return [
        _offer_event(
            EventType.CONVERSATION_OFFERED,
            row,
            now,
            agent_id,
            version=row.routing_version + 1,
            expires_at=expires_at.isoformat(),
            cost=cost,
            decision=dict(decision or {}),
        )
    ]


def accept(
    s: Session, conversation_id: int, agent_id: int, *, version: int | None, now: datetime
) -> list[EventRecord]:
    """The offered agent takes the conversation; refused when the offer is no longer theirs."""
    row = lock_conversation(s, conversation_id)
    if row.offered_to != agent_id or (version is not None and row.routing_version != version):
        raise Refused(
            "stale_offer",
            f"the offer of conversation {conversation_id} expired or went elsewhere",
            status=409,
        )
    waited = _end_wait(s, row.id, now, "answered", agent_id)
    s.execute(update(_AGENTS).where(_A.id == agent_id).values(last_assigned_at=now))
    _update_conversation(
        s,
        row,
        now,
        assignee_id=agent_id,
        assigned_at=now,
        enqueued_at=None,
        offered_to=None,
        offer_expires_at=None,
        declined_by=[],
    )
    extra: dict[str, Any] = {"cost": row.assigned_cost}
    if waited is not None:
        extra["wait_seconds"] = round(waited, 3)
    return [_assigned(row, now, to=agent_id, reason="offer_accepted", by=agent_id, **extra)]


def decline(
    s: Session,
    conversation_id: int,
    agent_id: int,
    *,
    now: datetime,
    reason: str,
    version: int | None = None,
    wait: bool = True,
    exclude: bool = True,
) -> list[EventRecord]:
    """The offer ends without acceptance (declined, expired, agent away): capacity back, the
    conversation keeps its place in the queue and, when ``exclude`` (the agent said no or did not
    answer), is never offered to this agent again."""
    row = lock_conversation(s, conversation_id, wait=wait)
    if row.offered_to != agent_id or (version is not None and row.routing_version != version):
        raise Refused(
            "stale_offer",
            f"the offer of conversation {conversation_id} expired or went elsewhere",
            status=409,
        )
    _lock_agents(s, [agent_id], wait=wait)
    credit(s, agent_id, row.assigned_cost)
    declined = sorted({*(row.declined_by or []), *([agent_id] if exclude else [])})
    _update_conversation(
        s, row, now, offered_to=None, offer_expires_at=None, assigned_cost=0, declined_by=declined
    )
    return [_offer_event(EventType.OFFER_DECLINED, row, now, agent_id, reason=reason)]


def _offer_event(kind: EventType, row: Any, now: datetime, agent_id: int, **data: Any) -> EventRecord:
    return new_event(
        kind,
        at=now,
        conversation_id=row.id,
        contact_id=row.contact_id,
        agent_id=agent_id,
        offered_to=agent_id,
        queue=row.queue,
        assignee_id=None,
        **data,
    )


def status_changed(s: Session, conversation_id: int, status: str, *, now: datetime) -> list[EventRecord]:
    """Keep the ledger true when a conversation's status changes (called after the status is
    written): resolving gives capacity back and ends a wait as abandoned. Reopening charges nothing
    here; the router backs or re-queues reopened conversations (see ``back_assignment``)."""
    if status in HOLDS_CAPACITY:
        return []
    row = lock_conversation(s, conversation_id)
    _lock_agents(s, [a for a in (row.assignee_id, row.offered_to) if a is not None], wait=True)
    credit(s, row.assignee_id if row.offered_to is None else row.offered_to, row.assigned_cost)
    if row.enqueued_at is not None:
        _end_wait(s, row.id, now, "abandoned", None)
    if row.assigned_cost or row.enqueued_at is not None or row.offered_to is not None:
        _update_conversation(
            s, row, now, assigned_cost=0, enqueued_at=None, offered_to=None, offer_expires_at=None
        )
    return []


def back_assignment(
    s: Session,
    conversation_id: int,
    *,
    costs: Mapping[str, int],
    now: datetime,
    assignee_online: bool,
    wait: bool = True,
) -> list[EventRecord]:
    """An active conversation whose assignee holds no capacity for it (it was reopened): charge the
    assignee when they are online with room, else give it back to its queue."""
    row = lock_conversation(s, conversation_id, wait=wait)
    if row.assignee_id is None or row.assigned_cost > 0 or row.status not in HOLDS_CAPACITY:
        return []
    cost = cost_of(costs, row.channel_kind)
    _lock_agents(s, [row.assignee_id], wait=wait)
    if assignee_online:
        try:
            charge(s, row.assignee_id, cost, now)
        except Refused:
            pass
        else:
            _update_conversation(s, row, now, assigned_cost=cost)
            return []
    reason = "reopened; assignee has no room" if assignee_online else "reopened; assignee not online"
    return unassign(s, conversation_id, now=now, reason=reason, wait=wait)
