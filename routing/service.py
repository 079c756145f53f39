"""The router: event-driven rounds plus a reconciliation sweep, each round snapshot -> plan -> claim.

A round is idempotent and safe to run in any number of processes at once: it reads a snapshot,
lets the pure decision code (``routing.decide``) propose, and makes each proposal real through the
claim path (``routing.claim``), whose conditional updates refuse whatever another process did
first. A round, in order:

1. presence: record agents whose effective presence changed (heartbeats, chosen status);
2. offers: expired ones, and those of agents no longer online, go back to their queue at once;
3. agents away or offline longer than the grace period give back their conversations, as each
   queue says (keep, re-queue, re-queue only those without an agent reply);
4. reopened conversations are charged to their assignee again, or re-queued when they cannot be;
5. new unowned conversations are matched to a queue and enqueued;
6. waiting conversations are planned and claimed (or offered), overflowed per their queue's steps.

``wake()`` starts a round at once (a message arrived, an agent freed up or came online); without
one a round runs every ``sweep_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from hub.lifecycle import stop_loop
from hub.model import Direction, EventRecord, EventType, Refused, new_event, utcnow
from routing import claim, presence
from routing.config import RoutingSettings
from routing.decide import match_queue, plan
from routing.model import (
    AgentState,
    AssignMode,
    ConversationFacts,
    Decision,
    OnAgentAway,
    Presence,
    QueueSpec,
    Waiting,
)
from routing.queues import QueueStore
from storage.engine import Database
from storage.models import Agent, Contact, Conversation, Event, Message, QueueWait

log = logging.getLogger(__name__)

Record = Callable[[Session, list[EventRecord]], list[EventRecord]]
Publish = Callable[[list[EventRecord]], None]
CLAIMS_PER_TRANSACTION = 64
ENQUEUE_PER_TRANSACTION = 500
SKIPPED_RETRY_SECONDS = 0.1
# The advisory lock whose holder routes (PostgreSQL); any fixed 64-bit number unique to the hub.
ROUTER_LOCK_KEY = 0x6875625F726F7574  # "hub_rout"

_C = Conversation.__table__.c
_PRESENCE = {p.value: p for p in Presence}
_ACTIVE = _C.status.in_(sorted(claim.HOLDS_CAPACITY))


@dataclass
class RoundReport:
    """What one round did (for logs, tests and the benchmark)."""

    enqueued: int = 0
    assigned: int = 0
    offered: int = 0
    overflowed: int = 0
    requeued: int = 0
    offers_ended: int = 0
    refused: int = 0
    waiting: int = 0
    presence_changes: int = 0
    skipped: bool = False  # another process was routing; this one will try again shortly
    assign_latencies: list[float] = field(default_factory=list)  # seconds, claim commit - round start


class Router:
    def __init__(
        self,
        db: Database,
        settings: RoutingSettings,
        queues: QueueStore,
        record: Record,
        publish: Publish,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.settings = settings
        self.queues = queues
        self.record = record
        self.publish = publish
        self.clock = clock
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._dirty: set[str] | None = set()
        self._task: asyncio.Task[None] | None = None
        self._connections: Counter[int] = Counter()
        self._last_heartbeat = 0.0
        self._reported: dict[int, tuple[int, str]] = {}  # conversation -> (step, reason) last told
        self._background: set[asyncio.Task[None]] = set()
        self._agent_profiles: (
            tuple[tuple[Any, ...], dict[int, tuple[str, int, dict[str, int], frozenset[str]]]] | None
        ) = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="router")

    async def stop(self, grace: float = 10.0) -> None:
        """End the loop after the round in hand (see ``hub.lifecycle``), then the background writes."""
        self._stopping = True
        self._wakeup.set()
        await stop_loop(self._task, grace=grace, name="router")
        self._task = None
        # Writes still running: let them finish before the engine goes.
        while running := [task for task in self._background if not task.done()]:
            await asyncio.gather(*running, return_exceptions=True)

    def wake(self, queues: Iterable[str] | None = None) -> None:
        """Run a round soon; ``queues`` limits its planning to those (None: all)."""
        if queues is None or self._dirty is None:
            self._dirty = None
        else:
            self._dirty.update(queues)
        self._wakeup.set()

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=self.settings.sweep_seconds)
            if self._stopping:
                return
            woken = self._wakeup.is_set()
            self._wakeup.clear()
            only, self._dirty = (self._dirty if woken else None), set()
            try:
                report = await self.run_round(only=only)
                failures = 0
                if report.skipped:  # the other router may have read its snapshot before our trigger
                    await asyncio.sleep(SKIPPED_RETRY_SECONDS * (0.5 + random.random()))
                    self.wake(only)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                log.exception("routing round failed (%d in a row); retrying", failures)
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))

    # -- presence, from the web layer --------------------------------------------------------

    async def connected(self, agent_id: int) -> None:
        """An inbox of the agent opened in this process."""
        self._connections[agent_id] += 1
        await self._heartbeat(agent_id, connected=True)

    async def disconnected(self, agent_id: int) -> None:
        """An inbox closed; the agent is offline once their last one here is gone (other processes
        keep them online by their own heartbeats)."""
        if agent_id not in self._connections:
            return
        self._connections[agent_id] -= 1
        if self._connections[agent_id] <= 0:
            del self._connections[agent_id]
            # Closing sockets are often cancelled (server shutdown): the heartbeat runs as the
            # router's own task, so a cancelled caller neither cuts it short nor leaves it running
            # after stop() has let the database go.
            await asyncio.shield(self._in_background(self._heartbeat(agent_id, connected=False)))

    async def choose_status(self, agent_id: int, status: str) -> Presence:
        if status not in presence.STATUSES:
            raise Refused("invalid_status", "status must be online, away or offline", status=422)
        now = self.clock()

        def work(s: Session) -> tuple[Presence, list[EventRecord]]:
            presence.choose(s, agent_id, status)
            _, events = presence.observe(s, now, self.settings.heartbeat_timeout_seconds, [agent_id])
            events += self._end_offers_of_absent(s, now)
            row = s.execute(select(Agent.presence).where(Agent.id == agent_id)).scalar_one()
            return Presence(row), self.record(s, events)

        effective, events = await self.db.run_write(work)
        self.publish(events)
        self.wake()
        return effective

    async def _heartbeat(self, agent_id: int, *, connected: bool) -> None:
        now = self.clock()

        def work(s: Session) -> list[EventRecord]:
            presence.heartbeat(
                s, agent_id, now, connected=connected, timeout=self.settings.heartbeat_timeout_seconds
            )
            _, events = presence.observe(s, now, self.settings.heartbeat_timeout_seconds, [agent_id])
            if not connected:
                events += self._end_offers_of_absent(s, now)
            return self.record(s, events)

        events = await self.db.run_write(work)
        self.publish(events)
        if events:
            self.wake()

    async def _refresh_heartbeats(self) -> None:
        """Keep this process's connected agents fresh, a third of the timeout at a time."""
        interval = self.settings.heartbeat_timeout_seconds / 3
        if not self._connections or time.monotonic() - self._last_heartbeat < interval:
            return
        self._last_heartbeat = time.monotonic()
        ids, now = list(self._connections), self.clock()

        def work(s: Session) -> None:
            s.execute(
                update(Agent)
                .where(Agent.id.in_(ids))
                .values(presence_at=now)
                .execution_options(synchronize_session=False)
            )

        await self.db.run_write(work)

    # -- the hub's writes (hub.types.Assignments) -------------------------------------------

    def assign(
        self,
        session: Session,
        conversation_id: int,
        agent_id: int | None,
        *,
        by: int | None,
        reason: str,
        expected_assignee: int | None,
        now: datetime,
    ) -> list[EventRecord]:
        if agent_id is None:
            return claim.unassign(
                session, conversation_id, now=now, reason=reason, by=by, expected_assignee=expected_assignee
            )
        return claim.assign(
            session, conversation_id, agent_id, costs=self.settings.costs, now=now, reason=reason, by=by
        )

    def status_changed(
        self, session: Session, conversation_id: int, status: str, *, now: datetime
    ) -> list[EventRecord]:
        return claim.status_changed(session, conversation_id, status, now=now)

    async def presence_of(self, agent_id: int) -> dict[str, str]:
        """The status an agent chose and the presence the router sees for them."""
        async with self.db.read() as s:
            row = (await s.execute(select(Agent.status, Agent.presence).where(Agent.id == agent_id))).first()
        return {"status": row.status, "presence": row.presence} if row else {}

    async def queues_for(self, agent_id: int) -> frozenset[str]:
        """The queues an agent serves: they have the required skills and take one of its channels."""
        specs = await self.queues.current()
        async with self.db.read() as s:
            row = (
                await s.execute(select(Agent.skills, Agent.channel_kinds).where(Agent.id == agent_id))
            ).first()
        if row is None:
            return frozenset()
        return frozenset(
            q.name for q in specs if serves(q, row.skills or {}, frozenset(row.channel_kinds or ()))
        )

    async def configure_agent(self, agent_id: int, changes: Mapping[str, Any]) -> dict[str, Any]:
        """An admin sets an agent's capacity, skills (1-5) and the channel kinds they take."""
        values = agent_routing_values(changes)

        def work(s: Session) -> dict[str, Any]:
            row = s.execute(select(Agent.load).where(Agent.id == agent_id, Agent.active)).first()
            if row is None:
                raise Refused("not_found", f"no active agent {agent_id}", status=404)
            if "capacity" in values and values["capacity"] < row.load:
                raise Refused(
                    "capacity_below_load",
                    f"the agent holds {row.load} units now; resolve or transfer conversations first",
                )
            s.execute(
                update(Agent)
                .where(Agent.id == agent_id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            self.record(
                s,
                [
                    new_event(
                        EventType.AGENT_UPDATED, agent_id=agent_id, **{k: values[k] for k in sorted(values)}
                    )
                ],
            )
            agent = s.execute(
                select(
                    Agent.id,
                    Agent.capacity,
                    Agent.load,
                    Agent.skills,
                    Agent.channel_kinds,
                    Agent.status,
                    Agent.presence,
                ).where(Agent.id == agent_id)
            ).one()
            return dict(agent._mapping)

        result = await self.db.run_write(work)
        self.wake()
        return result

    # -- transfers and offers, from the web layer --------------------------------------------

    async def transfer(
        self, conversation_id: int, *, by: int, agent_id: int | None = None, queue: str | None = None
    ) -> list[EventRecord]:
        """Agent -> agent or agent -> queue, through the claim path."""
        if (agent_id is None) == (queue is None):
            raise Refused("invalid_transfer", "give exactly one of agent_id or queue", status=422)
        if queue is not None and queue not in {q.name for q in await self.queues.current()}:
            raise Refused("unknown_queue", f"no queue named {queue!r}", status=422)
        now = self.clock()

        def work(s: Session) -> list[EventRecord]:
            if agent_id is not None:
                events = claim.assign(
                    s, conversation_id, agent_id, costs=self.settings.costs, now=now, reason="transfer", by=by
                )
            else:
                events = claim.unassign(s, conversation_id, now=now, reason="transfer", by=by, to_queue=queue)
            return self.record(s, events)

        events = await self.db.run_write(work)
        self.publish(events)
        self.wake(None if queue is None else [queue])
        return events

    async def accept(self, conversation_id: int, agent_id: int, version: int | None) -> list[EventRecord]:
        now = self.clock()
        events = await self.db.run_write(
            lambda s: self.record(s, claim.accept(s, conversation_id, agent_id, version=version, now=now))
        )
        self.publish(events)
        return events

    async def decline(self, conversation_id: int, agent_id: int, version: int | None) -> list[EventRecord]:
        now = self.clock()
        events = await self.db.run_write(
            lambda s: self.record(
                s, claim.decline(s, conversation_id, agent_id, now=now, reason="declined", version=version)
            )
        )
        self.publish(events)
        self.wake()
        return events

    # -- one round ---------------------------------------------------------------------------

    async def run_round(self, *, only: set[str] | None = None, now: datetime | None = None) -> RoundReport:
        """One pass of the six steps. ``only`` (a round woken by arrivals) limits it to reopened and
        new conversations and to planning these queues plus those touched; a sweep does everything.

        Processes sharing a PostgreSQL database take turns: a round runs only while its process
        holds the router's advisory lock, so routers never race each other for the same rows (the
        claim path would keep them correct, but their identical plans would mostly collide). A
        process that finds the lock taken reports ``skipped`` and tries again shortly.
        """
        report = RoundReport()
        await self._refresh_heartbeats()
        async with self.db.exclusive(ROUTER_LOCK_KEY) as ours:
            if not ours:
                report.skipped = True
                return report
            await self._round(report, only, now or self.clock())
        return report

    async def _round(self, report: RoundReport, only: set[str] | None, now: datetime) -> None:
        started = time.perf_counter()
        specs = {q.name: q for q in await self.queues.current()}
        touched: set[str] = set()

        def housekeeping(s: Session) -> list[EventRecord]:
            if only is not None:
                # A round woken by an arrival: reopened conversations only. Timeouts, grace periods
                # and targets are the sweep's work (presence changes run their own checks at once).
                return self.record(s, self._back_reopened(s, now))
            changes, events = presence.observe(s, now, self.settings.heartbeat_timeout_seconds)
            report.presence_changes = len(changes)
            ended = self._end_offers(s, now)
            report.offers_ended = len(ended)
            events += ended
            requeued = self._requeue_from_absent(s, now, specs)
            report.requeued = sum(1 for e in requeued if e.type == EventType.CONVERSATION_QUEUED)
            events += requeued
            events += self._back_reopened(s, now)
            events += self._record_breaches(s, now, specs)
            if changes or ended:
                touched.update(specs)  # an agent came or went: every queue may move
            return self.record(s, events)

        events = await self.db.run_write(housekeeping)
        self.publish(events)
        # New conversations into queues, in short transactions (each holds its rows' locks).
        ordered = list(specs.values())
        while True:
            queued = await self.db.run_write(lambda s: self.record(s, self._enqueue_new(s, now, ordered)))
            self.publish(queued)
            report.enqueued += len(queued)
            events += queued
            if len(queued) < ENQUEUE_PER_TRANSACTION:
                break
        touched.update(e.data["queue"] for e in events if e.type == EventType.CONVERSATION_QUEUED)
        targets = None if only is None else (only | touched)
        if targets is not None and not targets:
            return
        waiting, versions = await self._waiting(specs, targets)
        report.waiting = len(waiting)
        if not waiting:
            return
        # A targeted round considers the agents who serve those queues (skills and channels); a
        # sweep considers everyone, so its explanations count every agent.
        agents = await self._agents(
            None if targets is None else [specs[q] for q in sorted(targets) if q in specs]
        )
        decisions = plan(specs, waiting, agents, now, self.settings.costs)
        await self._carry_out(decisions, versions, specs, now, report, started)
        overflowed = {d.overflow_to for d in decisions if d.overflow_to is not None}
        if overflowed:  # what overflowed may find an agent in its new queue at once
            waiting, versions = await self._waiting(specs, {q for q in overflowed if q is not None})
            decisions = plan(specs, waiting, await self._agents(), now, self.settings.costs)
            await self._carry_out(
                [d for d in decisions if d.overflow_to is None], versions, specs, now, report, started
            )

    # -- step 2: offers ----------------------------------------------------------------------

    def _end_offers(self, s: Session, now: datetime) -> list[EventRecord]:
        expired = s.execute(
            select(_C.id, _C.offered_to).where(_C.offered_to.is_not(None), _C.offer_expires_at <= now)
        ).all()
        events: list[EventRecord] = []
        for conversation_id, agent_id in expired:
            events += _try(claim.decline, s, conversation_id, agent_id, now=now, reason="expired", wait=False)
        return events + self._end_offers_of_absent(s, now)

    def _end_offers_of_absent(self, s: Session, now: datetime) -> list[EventRecord]:
        """Offers to agents no longer online re-route at once, not at their timeout."""
        rows = s.execute(
            select(_C.id, _C.offered_to)
            .join(Agent, Agent.id == _C.offered_to)
            .where(Agent.presence != Presence.ONLINE.value)
        ).all()
        events: list[EventRecord] = []
        for conversation_id, agent_id in rows:
            events += _try(
                claim.decline,
                s,
                conversation_id,
                agent_id,
                now=now,
                reason="agent_away",
                wait=False,
                exclude=False,
            )
        return events

    # -- step 3: agents away past the grace period --------------------------------------------

    def _requeue_from_absent(
        self, s: Session, now: datetime, specs: Mapping[str, QueueSpec]
    ) -> list[EventRecord]:
        since = now - timedelta(seconds=self.settings.away_grace_seconds)
        answered = exists().where(
            Message.conversation_id == _C.id,
            Message.direction == Direction.OUT.value,
            Message.agent_id.is_not(None),
            Message.created_at >= _C.assigned_at,
        )
        rows = s.execute(
            select(_C.id, _C.queue, _C.assignee_id, answered.label("answered"))
            .join(Agent, Agent.id == _C.assignee_id)
            .where(
                Agent.presence != Presence.ONLINE.value,
                Agent.presence_changed_at <= since,
                _C.assigned_cost > 0,
                _ACTIVE,
            )
        ).all()
        events: list[EventRecord] = []
        for row in rows:
            spec = specs.get(row.queue) if row.queue else None
            policy = spec.on_agent_away if spec else OnAgentAway.REQUEUE_UNANSWERED
            if policy is OnAgentAway.KEEP or (policy is OnAgentAway.REQUEUE_UNANSWERED and row.answered):
                continue
            events += _try(
                claim.unassign,
                s,
                row.id,
                now=now,
                reason="agent_absent",
                expected_assignee=row.assignee_id,
                wait=False,
            )
        return events

    # -- step 4: reopened conversations ------------------------------------------------------

    def _back_reopened(self, s: Session, now: datetime) -> list[EventRecord]:
        rows = s.execute(
            select(_C.id, Agent.presence)
            .join(Agent, Agent.id == _C.assignee_id)
            .where(_C.assigned_cost == 0, _ACTIVE)
        ).all()
        events: list[EventRecord] = []
        for conversation_id, agent_presence in rows:
            events += _try(
                claim.back_assignment,
                s,
                conversation_id,
                costs=self.settings.costs,
                now=now,
                assignee_online=agent_presence == Presence.ONLINE.value,
                wait=False,
            )
        return events

    # -- SLA: waits past their queue's target, recorded once --------------------------------

    def _record_breaches(
        self, s: Session, now: datetime, specs: Mapping[str, QueueSpec]
    ) -> list[EventRecord]:
        if not specs:
            return []
        earliest = now - timedelta(seconds=min(q.sla_seconds for q in specs.values()))
        rows = s.execute(
            select(QueueWait.id, QueueWait.conversation_id, QueueWait.queue, QueueWait.enqueued_at).where(
                QueueWait.ended_at.is_(None),
                QueueWait.breached_at.is_(None),
                QueueWait.enqueued_at <= earliest,
            )
        ).all()
        events: list[EventRecord] = []
        for row in rows:
            spec = specs.get(row.queue)
            if spec is None or row.enqueued_at > now - timedelta(seconds=spec.sla_seconds):
                continue
            done = s.execute(
                update(QueueWait)
                .where(QueueWait.id == row.id, QueueWait.breached_at.is_(None))
                .values(breached_at=now)
                .execution_options(synchronize_session=False)
            )
            if getattr(done, "rowcount", 0) == 1:  # another process may have recorded it first
                events.append(
                    new_event(
                        EventType.SLA_BREACHED,
                        at=now,
                        conversation_id=row.conversation_id,
                        queue=row.queue,
                        sla_seconds=spec.sla_seconds,
                        waited_seconds=round((now - row.enqueued_at).total_seconds(), 3),
                        assignee_id=None,
                    )
                )
        return events

    # -- step 5: new conversations into queues -----------------------------------------------

    def _enqueue_new(self, s: Session, now: datetime, queues: Sequence[QueueSpec]) -> list[EventRecord]:
        rows = s.execute(
            select(_C.id, _C.channel, _C.channel_kind, Contact.attributes)
            .join(Contact, Contact.id == _C.contact_id)
            .where(_C.assignee_id.is_(None), _C.offered_to.is_(None), _C.enqueued_at.is_(None), _ACTIVE)
            .order_by(_C.id)
            .limit(ENQUEUE_PER_TRANSACTION)
        ).all()
        if not rows:
            return []
        first_texts = _first_texts(s, [r.id for r in rows])
        events: list[EventRecord] = []
        for row in rows:
            attributes = dict(row.attributes or {})
            language = attributes.get("language")
            facts = ConversationFacts(
                channel_kind=row.channel_kind,
                channel=row.channel,
                language=language if isinstance(language, str) else None,
                contact_attributes=attributes,
                first_text=first_texts.get(row.id, ""),
            )
            spec = match_queue(queues, facts)
            if spec is None:
                if self._reported.get(row.id) != (-1, "no queue"):
                    self._reported[row.id] = (-1, "no queue")
                    log.warning("conversation %d matches no queue; it stays unassigned", row.id)
                continue
            events += _try(claim.enqueue, s, row.id, spec.name, now=now, reason="matched", wait=False)
        return events

    # -- step 6: plan and claim --------------------------------------------------------------

    async def _waiting(
        self, specs: Mapping[str, QueueSpec], targets: set[str] | None
    ) -> tuple[list[Waiting], dict[int, int]]:
        query = select(
            _C.id,
            _C.queue,
            _C.channel_kind,
            _C.enqueued_at,
            _C.priority,
            _C.contact_id,
            _C.declined_by,
            _C.routing_version,
        ).where(_C.enqueued_at.is_not(None), _C.assignee_id.is_(None), _C.offered_to.is_(None), _ACTIVE)
        if targets is not None:
            query = query.where(_C.queue.in_(sorted(targets)))
        async with self.db.read() as s:
            rows = (await s.execute(query)).all()
            sticky_contacts = [
                r.contact_id
                for r in rows
                if (spec := specs.get(r.queue)) and any(st.last_agent_only for st in spec.steps)
            ]
            last_agent = await _last_agents(s, sticky_contacts)
        waiting = [
            Waiting(
                conversation_id=r.id,
                queue=r.queue,
                channel_kind=r.channel_kind,
                enqueued_at=r.enqueued_at,
                priority=r.priority,
                last_agent_id=last_agent.get(r.contact_id),
                declined_by=frozenset(r.declined_by or ()),
            )
            for r in rows
        ]
        return waiting, {r.id: r.routing_version for r in rows}

    async def _agents(self, serving: Sequence[QueueSpec] | None = None) -> list[AgentState]:
        """The active agents as the planner sees them (only those serving ``serving`` when given).

        What changes with each claim (presence, load, last assignment) is read every time; skills,
        channels, capacity and names only when an agent was created, changed or deactivated since
        (decoding 2,000 agents' JSON was most of a round)."""
        async with self.db.read() as s:
            profiles = await self._profiles(s)
            query = select(Agent.id, Agent.presence, Agent.load, Agent.last_assigned_at).where(Agent.active)
            if serving is not None:
                ids = sorted(
                    agent_id
                    for agent_id, (_, _, skills, kinds) in profiles.items()
                    if any(serves(q, skills, kinds) for q in serving)
                )
                query = query.where(Agent.id.in_(ids))
            now_rows = (await s.execute(query)).all()
        agents = []
        for r in now_rows:
            profile = profiles.get(r.id)
            if profile is None:  # created after the profiles were read: next round knows them
                continue
            name, capacity, skills, kinds = profile
            agents.append(
                AgentState(
                    id=r.id,
                    name=name,
                    presence=_PRESENCE[r.presence],
                    capacity=capacity,
                    load=r.load,
                    skills=skills,
                    channel_kinds=kinds,
                    last_assigned_at=r.last_assigned_at,
                )
            )
        return agents

    async def _profiles(self, s: Any) -> dict[int, tuple[str, int, dict[str, int], frozenset[str]]]:
        stamp = (
            await s.execute(
                select(
                    select(func.max(Event.id))
                    .where(Event.type.in_([EventType.AGENT_CREATED.value, EventType.AGENT_UPDATED.value]))
                    .scalar_subquery(),
                    select(func.count()).select_from(Agent).where(Agent.active).scalar_subquery(),
                )
            )
        ).one()
        if self._agent_profiles is None or self._agent_profiles[0] != tuple(stamp):
            rows = await s.execute(
                select(Agent.id, Agent.name, Agent.capacity, Agent.skills, Agent.channel_kinds).where(
                    Agent.active
                )
            )
            profiles = {
                r.id: (
                    r.name,
                    r.capacity,
                    {str(k): int(v) for k, v in (r.skills or {}).items()},
                    frozenset(r.channel_kinds or ()),
                )
                for r in rows
            }
            self._agent_profiles = (tuple(stamp), profiles)
        return self._agent_profiles[1]

    async def _carry_out(
        self,
        decisions: list[Decision],
        versions: Mapping[int, int],
        specs: Mapping[str, QueueSpec],
        now: datetime,
        report: RoundReport,
        started: float,
    ) -> None:
        actionable = [d for d in decisions if d.agent_id is not None or d.overflow_to is not None]
        self._report_unassignable([d for d in decisions if d.agent_id is None and d.overflow_to is None])
        for i in range(0, len(actionable), CLAIMS_PER_TRANSACTION):
            chunk = actionable[i : i + CLAIMS_PER_TRANSACTION]
            events = await self.db.run_write(
                functools.partial(
                    self._claim_chunk, chunk=chunk, versions=versions, specs=specs, now=now, report=report
                )
            )
            done = time.perf_counter() - started
            report.assign_latencies += [done] * sum(
                1 for e in events if e.type == EventType.CONVERSATION_ASSIGNED
            )
            self.publish(events)

    def _claim_chunk(
        self,
        s: Session,
        chunk: list[Decision],
        versions: Mapping[int, int],
        specs: Mapping[str, QueueSpec],
        now: datetime,
        report: RoundReport,
    ) -> list[EventRecord]:
        events: list[EventRecord] = []
        for d in chunk:
            version = versions.get(d.conversation_id)
            try:
                if d.overflow_to is not None:
                    events += claim.enqueue(
                        s,
                        d.conversation_id,
                        d.overflow_to,
                        now=now,
                        reason="overflow",
                        wait=False,
                        from_queue=d.queue,
                        step=d.step,
                    )
                    report.overflowed += 1
                    continue
                assert d.agent_id is not None
                spec = specs[d.queue]
                if spec.mode is AssignMode.OFFER:
                    events += claim.offer(
                        s,
                        d.conversation_id,
                        d.agent_id,
                        costs=self.settings.costs,
                        now=now,
                        expires_at=now + timedelta(seconds=spec.offer_timeout_seconds),
                        expected_version=version,
                        decision=d.explain(),
                        wait=False,
                    )
                    report.offered += 1
                else:
                    events += claim.assign(
                        s,
                        d.conversation_id,
                        d.agent_id,
                        costs=self.settings.costs,
                        now=now,
                        reason="routed",
                        expected_version=version,
                        decision=d.explain(),
                        wait=False,
                    )
                    report.assigned += 1
                self._reported.pop(d.conversation_id, None)
            except Refused:
                report.refused += 1  # another process or a manual claim was first; next round retries
        return self.record(s, events)

    def _report_unassignable(self, decisions: list[Decision]) -> None:
        """'Nobody can take this now, because ...' — recorded once per conversation and step."""
        fresh = []
        for d in decisions:
            key = (d.step, _summary(d))
            if self._reported.get(d.conversation_id) == key:
                continue
            self._reported[d.conversation_id] = key
            fresh.append(
                new_event(
                    EventType.ROUTING_NO_AGENT,
                    conversation_id=d.conversation_id,
                    queue=d.queue,
                    assignee_id=None,
                    decision=d.explain(),
                )
            )
        if len(self._reported) > 100_000:
            self._reported.clear()
        if fresh:
            self._in_background(self._store_signals(fresh))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task of the router's that ``stop()`` waits for."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _store_signals(self, events: list[EventRecord]) -> None:
        try:
            self.publish(await self.db.run_write(lambda s: self.record(s, events)))
        except Exception:
            log.exception("could not record routing decisions")


def serves(queue: QueueSpec, skills: Mapping[str, Any], channel_kinds: frozenset[str]) -> bool:
    """Whether an agent with these skills and channels belongs to the queue at all (any step)."""
    if channel_kinds and queue.match.channel_kinds and not channel_kinds & queue.match.channel_kinds:
        return False
    return all(int(skills.get(name, 0)) >= level for name, level in queue.required_skills.items())


def agent_routing_values(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the routing attributes an admin may set on an agent."""
    unknown = set(changes) - {"capacity", "skills", "channel_kinds"}
    if unknown:
        raise Refused("unknown_field", f"cannot set {', '.join(sorted(unknown))} here", status=422)
    if not changes:
        raise Refused("empty_patch", "give at least one of capacity, skills, channel_kinds", status=422)
    values: dict[str, Any] = {}
    if "capacity" in changes:
        capacity = changes["capacity"]
        if type(capacity) is not int or not 0 <= capacity <= 100_000:
            raise Refused(
                "invalid_capacity", "capacity must be an integer from 0 to 100000 units", status=422
            )
        values["capacity"] = capacity
    if "skills" in changes:
        skills = changes["skills"]
        if not isinstance(skills, dict) or not all(
            isinstance(k, str) and k.strip() and len(k) <= 100 and type(v) is int and 1 <= v <= 5
            for k, v in skills.items()
        ):
            raise Refused(
                "invalid_skills", 'skills must map names to proficiency 1-5, e.g. {"billing": 4}', status=422
            )
        values["skills"] = {k.strip(): v for k, v in skills.items()}
    if "channel_kinds" in changes:
        kinds = changes["channel_kinds"]
        if not isinstance(kinds, list) or not all(isinstance(k, str) and k for k in kinds):
            raise Refused(
                "invalid_channel_kinds",
                'channel_kinds must be a list such as ["email", "webchat"]',
                status=422,
            )
        values["channel_kinds"] = sorted(set(kinds))
    return values


def _summary(d: Decision) -> str:
    counts = getattr(d, "rejected_counts", {}) or {}
    return ",".join(f"{k}={v}" for k, v in sorted(counts.items()))


def _try(fn: Callable[..., list[EventRecord]], *args: Any, **kwargs: Any) -> list[EventRecord]:
    """A claim step that may lose to another process: losing is not an error, just no events."""
    try:
        return fn(*args, **kwargs)
    except Refused as exc:
        log.debug("routing step %s refused: %s", fn.__name__, exc)
        return []


def _first_texts(s: Session, conversation_ids: list[int]) -> dict[int, str]:
    """The first customer message of each conversation, for keyword rules."""
    first = (
        select(Message.conversation_id, func.min(Message.id).label("mid"))
        .where(Message.conversation_id.in_(conversation_ids), Message.direction == Direction.IN.value)
        .group_by(Message.conversation_id)
        .subquery()
    )
    rows = s.execute(
        select(Message.conversation_id, Message.text).join(first, and_(Message.id == first.c.mid))
    ).all()
    return {r.conversation_id: r.text or "" for r in rows}


async def _last_agents(s: Any, contact_ids: list[int]) -> dict[int, int]:
    """Who last served each contact (sticky routing): the assignee of their latest assigned conversation."""
    found: dict[int, int] = {}
    for i in range(0, len(contact_ids), 500):
        chunk = sorted(set(contact_ids[i : i + 500]))
        rows = await s.execute(
            select(_C.contact_id, _C.assignee_id)
            .where(_C.contact_id.in_(chunk), or_(_C.assignee_id.is_not(None)))
            .order_by(_C.contact_id, _C.assigned_at.desc())
        )
        for contact_id, agent_id in rows:
            found.setdefault(contact_id, agent_id)
    return found
