"""What a supervisor sees: queue statistics and the agents' overview, computed by SQL.

Every figure is an aggregate over the routing columns of ``agents`` and ``conversations`` and over
``queue_waits`` (one row per stay of a conversation in a queue), so every hub process computes the
same answer, on SQLite and PostgreSQL alike. Queries group in the database (waiting conversations
by queue and priority, agents by profile); today's ended stays, which percentiles need one by one,
are read once and then topped up (:class:`Today`).

Service level is the common contact-centre definition::

    answered within the queue's SLA target / (answered + abandoned after SHORT_ABANDON_SECONDS)

over the queue stays that ended in the window (the last 15 minutes, or today since midnight UTC).
A customer who gives up within a few seconds (a misdial, a chat opened by mistake) is not a
failure of the centre and is left out; later abandons count against the service level. A stay that
ended by moving to another queue (overflow, transfer) counts in neither: the next queue's stay
is the one that is answered or abandoned. Waits are measured against each queue's target as
configured now.

``run`` pushes the two reports as live-only events (``queues.updated``, ``agents.updated``) when
they changed; figures that only grow with the clock (how long the oldest has waited) are not news
by themselves: the live view ages them from the timestamps it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from bisect import bisect_right, insort
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Float, Text, and_, case, cast, func, literal, null, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from hub.model import ConversationStatus, EventRecord, utcnow
from routing.claim import DEFAULT_COST, HOLDS_CAPACITY, cost_of
from routing.exposition import Exposition
from routing.model import Presence, QueueSpec
from routing.presence import effective
from storage.engine import Database
from storage.models import Agent, Conversation, QueueWait, UTCDateTime

log = logging.getLogger(__name__)

# Abandons within this many seconds of enqueueing are left out of the service level.
SHORT_ABANDON_SECONDS = 5.0
# A waiting conversation is "at risk" once it has waited this share of its queue's SLA target.
AT_RISK_SHARE = 0.8
ROLLING_WINDOW = timedelta(minutes=15)
# Where waiting conversations whose queue is not configured (or not set) are counted.
UNQUEUED = "(unqueued)"
SERVICE_LEVEL_RULE = (
    "answered within the queue's SLA target / (answered + abandoned), over the queue stays that ended "
    f"in the window (rolling_15m: the last 15 minutes; today: since 00:00 UTC); abandons within "
    f"{SHORT_ABANDON_SECONDS:g} s of enqueueing are not counted; stays that moved to another queue count "
    "there; null when nothing was answered or abandoned"
)
# All-time counters add the stays that ended before the last midnight (counted once a day) to a
# query over the days since. The cut moves this long after midnight, so that a transaction still
# committing a stay that ended just before midnight is not missed by the once-a-day count.
HISTORY_SETTLE = timedelta(minutes=5)
# How far back each round re-reads ended stays, for ends committed after the moment they record
# (a router transaction waiting for SQLite's write lock, say).
LATE_COMMIT_MARGIN = timedelta(minutes=2)
# Seconds that grow with the clock alone; a change in them is not news for the live view.
CLOCK_FIELDS = frozenset({"longest_wait_seconds", "seconds_since_last_assignment"})

_C = Conversation
_W = QueueWait
WAITING = and_(
    _C.enqueued_at.is_not(None),
    _C.assignee_id.is_(None),
    _C.status != ConversationStatus.RESOLVED.value,
)


def midnight(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass(slots=True)
class Tally:
    """The queue stays of one queue that ended in one window."""

    answered: int = 0
    answered_within_sla: int = 0
    abandoned: int = 0  # every abandon
    abandoned_counted: int = 0  # those after SHORT_ABANDON_SECONDS: what the service level counts
    answered_wait_seconds: float = 0.0

    @property
    def service_level(self) -> float | None:
        denominator = self.answered + self.abandoned_counted
        return round(self.answered_within_sla / denominator, 4) if denominator else None

    @property
    def breaches(self) -> int:
        """Answered later than the target, or abandoned after the short threshold."""
        return self.answered - self.answered_within_sla + self.abandoned_counted

    @property
    def average_speed_of_answer(self) -> float | None:
        return round(self.answered_wait_seconds / self.answered, 3) if self.answered else None

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.answered + other.answered,
            self.answered_within_sla + other.answered_within_sla,
            self.abandoned + other.abandoned,
            self.abandoned_counted + other.abandoned_counted,
            self.answered_wait_seconds + other.answered_wait_seconds,
        )


@dataclass(frozen=True, slots=True)
class Profile:
    """What decides whether an agent can take a queue's conversations at all."""

    skills: Mapping[str, int]  # skill -> proficiency
    channel_kinds: frozenset[str]  # empty: every kind

    @classmethod
    def from_json(cls, skills: str | None, kinds: str | None) -> Profile:
        """From the JSON text of agents.skills and agents.channel_kinds; a proficiency that is not a
        number counts as no skill."""
        parsed_skills = json.loads(skills) if skills else {}
        parsed_kinds = json.loads(kinds) if kinds else []
        levels = {
            str(skill): int(value)
            for skill, value in (parsed_skills.items() if isinstance(parsed_skills, dict) else ())
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        channel_kinds = (
            frozenset(str(k) for k in parsed_kinds) if isinstance(parsed_kinds, list) else frozenset()
        )
        return cls(levels, channel_kinds)


@dataclass(frozen=True, slots=True)
class AgentGroup:
    """Active agents alike in profile, in being online now, and in free capacity."""

    profile: Profile
    online: bool
    room: int  # capacity - load
    count: int


def cheapest_cost(
    queue_kinds: frozenset[str], agent_kinds: frozenset[str], costs: Mapping[str, int]
) -> int | None:
    """The least capacity a conversation of this queue would take from this agent; None when they
    have no channel kind in common (an empty set means every kind)."""
    if queue_kinds and agent_kinds:
        kinds = queue_kinds & agent_kinds
        if not kinds:
            return None
    else:
        kinds = queue_kinds or agent_kinds or frozenset(costs)
    return min((cost_of(costs, kind) for kind in kinds), default=DEFAULT_COST)


def staffing(spec: QueueSpec, groups: Iterable[AgentGroup], costs: Mapping[str, int]) -> tuple[int, int]:
    """(eligible, available) agents for a queue. Eligible: every required proficiency and a channel
    kind in common, whatever the presence. Available: eligible, online, and room for the cheapest
    conversation of the queue they could take."""
    required = list(spec.required_skills.items())
    cheapest: dict[frozenset[str], int | None] = {}  # agents share few channel-kind sets
    eligible = available = 0
    for group in groups:
        kinds, skills = group.profile.channel_kinds, group.profile.skills
        if kinds not in cheapest:
            cheapest[kinds] = cheapest_cost(spec.match.channel_kinds, kinds, costs)
        cost = cheapest[kinds]
        if cost is None:
            continue
        for skill, minimum in required:
            if skills.get(skill, 0) < minimum:
                break
        else:
            eligible += group.count
            if group.online and group.room >= cost:
                available += group.count
    return eligible, available


def percentile(ordered: Sequence[float], pct: int) -> float | None:
    """Linear interpolation between closest ranks (PostgreSQL's percentile_cont, numpy's default)."""
    if not ordered:
        return None
    low, rest = divmod((len(ordered) - 1) * pct, 100)
    value = ordered[low]
    if rest:
        value += (ordered[low + 1] - value) * rest / 100
    return round(value, 3)


def without_clock_fields(payload: Any) -> Any:
    if isinstance(payload, dict):
        return {k: without_clock_fields(v) for k, v in payload.items() if k not in CLOCK_FIELDS}
    if isinstance(payload, list):
        return [without_clock_fields(v) for v in payload]
    return payload


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _since(now: datetime, at: datetime | None) -> float | None:
    return round(max(0.0, (now - at).total_seconds()), 3) if at is not None else None


def _per_queue(column: Any, values: Mapping[str, Any], type_: Any = None) -> ColumnElement[Any]:
    """``CASE queue WHEN name THEN value ... END``: a per-queue target inside one grouped query."""
    if not values:
        return null()
    return case({name: literal(value, type_) for name, value in values.items()}, value=column)


def _count(*conditions: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((and_(*conditions), 1), else_=0)), 0)


@dataclass(slots=True)
class QueueDay:
    """One queue's answered and abandoned waits today, each list kept sorted."""

    answered: list[float] = field(default_factory=list)
    abandoned: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)  # both: what the percentiles are of

    def add(self, outcome: str, wait: float) -> None:
        insort(self.waits, wait)
        insort(self.answered if outcome == "answered" else self.abandoned, wait)

    def tally(self, sla_seconds: float) -> Tally:
        abandoned = len(self.abandoned)
        return Tally(
            answered=len(self.answered),
            answered_within_sla=bisect_right(self.answered, sla_seconds),
            abandoned=abandoned,
            abandoned_counted=abandoned - bisect_right(self.abandoned, SHORT_ABANDON_SECONDS),
            answered_wait_seconds=math.fsum(self.answered),
        )


class Today:
    """Today's answered and abandoned stays per queue, read once and then topped up each round.

    A busy day is tens of thousands of stays; ranking them for percentiles every second would
    dominate the live view's cost, so only stays that ended since the last read are fetched (by
    the queue_waits(queue, ended_at) index). The read reaches LATE_COMMIT_MARGIN further back, for
    stays whose end was committed a little after the time it records; ids seen are skipped.
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._key: tuple[datetime, tuple[str, ...]] | None = None
        self._queues: dict[str, QueueDay] = {}
        self._recent: dict[int, datetime] = {}  # id -> ended_at of stays inside the margin
        self._read_at: datetime | None = None

    async def refresh(self, s: AsyncSession, names: Sequence[str], now: datetime) -> dict[str, QueueDay]:
        async with self._lock:
            key = (midnight(now), tuple(sorted(names)))
            if key != self._key:  # a new day, or other queues: start over
                self._key, self._queues, self._recent, self._read_at = key, {}, {}, None
            since = key[0] if self._read_at is None else max(key[0], self._read_at - LATE_COMMIT_MARGIN)
            rows = await s.execute(
                select(_W.id, _W.queue, _W.outcome, _W.enqueued_at, _W.ended_at).where(
                    _W.queue.in_(names), _W.ended_at >= since, _W.outcome.in_(("answered", "abandoned"))
                )
            )
            for stay_id, queue, outcome, enqueued_at, ended_at in rows:
                if stay_id not in self._recent and ended_at is not None and outcome is not None:
                    self._recent[stay_id] = ended_at
                    wait = max(0.0, (ended_at - enqueued_at).total_seconds())
                    self._queues.setdefault(queue, QueueDay()).add(outcome, wait)
            self._read_at = now
            horizon = now - LATE_COMMIT_MARGIN
            self._recent = {i: ended for i, ended in self._recent.items() if ended >= horizon}
            return dict(self._queues)


class Supervision:
    """Queue statistics, the agents' overview and Prometheus metrics for supervisors."""

    def __init__(
        self,
        db: Database,
        queues: Callable[[], Awaitable[Sequence[QueueSpec]]],
        costs: Mapping[str, int],
        heartbeat_timeout_seconds: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self._queues = queues
        self.costs = costs
        self.heartbeat_timeout = heartbeat_timeout_seconds
        self.clock = clock
        self._today = Today()
        self._profiles: dict[tuple[str | None, str | None], Profile] = {}  # parsed once, by JSON text
        # (cut, targets) -> tallies of the stays that ended before the cut, for the all-time counters
        self._history: tuple[tuple[datetime, tuple[tuple[str, float], ...]], dict[str, Tally]] | None = None

    # -- SQL building blocks ------------------------------------------------------------------

    def _wait_seconds(self) -> ColumnElement[Any]:
        """How long a stay lasted, in seconds."""
        if self.db.is_sqlite:
            # julianday() keeps milliseconds; rounding to whole milliseconds removes the float noise
            # of day fractions, so that a wait of exactly the target is within it.
            days = func.julianday(_W.ended_at) - func.julianday(_W.enqueued_at)
            return func.round(days * 86_400_000.0) / 1000.0
        return cast(func.extract("epoch", _W.ended_at) - func.extract("epoch", _W.enqueued_at), Float)

    def _fresh(self, now: datetime) -> ColumnElement[bool]:
        """The agent's inbox sent a heartbeat recently enough (see routing.presence.effective)."""
        return Agent.presence_at >= now - timedelta(seconds=self.heartbeat_timeout)

    async def _tallies(
        self,
        s: AsyncSession,
        targets: Mapping[str, float],
        windows: Sequence[ColumnElement[bool]],
        *where: ColumnElement[bool],
    ) -> list[dict[str, Tally]]:
        """Per window, per queue: the ended stays' figures, from one grouped query."""
        wait = self._wait_seconds()
        answered = _W.outcome == "answered"
        abandoned = _W.outcome == "abandoned"
        within = and_(answered, wait <= _per_queue(_W.queue, targets, Float()))
        counted = and_(abandoned, wait > SHORT_ABANDON_SECONDS)
        columns: list[ColumnElement[Any]] = []
        for window in windows:
            columns += [
                _count(window, answered),
                _count(window, within),
                _count(window, abandoned),
                _count(window, counted),
                func.coalesce(func.sum(case((and_(window, answered), wait), else_=0.0)), 0.0),
            ]
        query = select(_W.queue, *columns).where(*where).group_by(_W.queue)
        found: list[dict[str, Tally]] = [{} for _ in windows]
        for queue, *values in await s.execute(query):
            for i in range(len(windows)):
                a, w, ab, c, total = values[5 * i : 5 * i + 5]
                found[i][queue] = Tally(int(a), int(w), int(ab), int(c), float(total))
        return found

    async def _agent_groups(self, s: AsyncSession, now: datetime) -> list[AgentGroup]:
        """Active agents grouped by skills, channel kinds, online now and free capacity: as few
        rows as there are distinct profiles. JSON is compared as text (PostgreSQL's json type
        has no equality), so equal profiles written differently only make an extra group."""
        per_agent = (
            select(
                cast(Agent.skills, Text).label("skills"),
                cast(Agent.channel_kinds, Text).label("kinds"),
                case((and_(Agent.status == Presence.ONLINE.value, self._fresh(now)), 1), else_=0).label(
                    "online"
                ),
                (Agent.capacity - Agent.load).label("room"),
            )
            .where(Agent.active)
            .subquery()
        )
        c = per_agent.c
        query = select(c.skills, c.kinds, c.online, c.room, func.count()).group_by(
            c.skills, c.kinds, c.online, c.room
        )
        rows = (await s.execute(query)).all()
        if len(self._profiles) > 2 * len(rows) + 100:  # mostly profiles nobody has any more
            self._profiles.clear()
        groups = []
        for skills, kinds, online, room, count in rows:
            profile = self._profiles.get((skills, kinds))
            if profile is None:
                profile = self._profiles[(skills, kinds)] = Profile.from_json(skills, kinds)
            groups.append(AgentGroup(profile, bool(online), int(room), int(count)))
        return groups

    # -- queues -----------------------------------------------------------------------------

    async def queues(self) -> dict[str, Any]:
        specs = list(await self._queues())
        now = self.clock()
        async with self.db.read() as s:
            return await self._queue_report(s, specs, now)

    async def _queue_report(self, s: AsyncSession, specs: list[QueueSpec], now: datetime) -> dict[str, Any]:
        names = [spec.name for spec in specs]
        risk = {q.name: now - timedelta(seconds=q.sla_seconds * AT_RISK_SHARE) for q in specs}
        breach = {q.name: now - timedelta(seconds=q.sla_seconds) for q in specs}
        breach_at = _per_queue(_C.queue, breach, UTCDateTime())
        waiting_rows = await s.execute(
            select(
                _C.queue,
                _C.priority,
                func.count(),
                func.count(_C.offered_to),
                func.min(_C.enqueued_at),
                _count(
                    _C.enqueued_at < _per_queue(_C.queue, risk, UTCDateTime()), _C.enqueued_at >= breach_at
                ),
                _count(_C.enqueued_at < breach_at),
            )
            .where(WAITING)
            .group_by(_C.queue, _C.priority)
        )
        waiting: dict[str, Counter[str]] = defaultdict(Counter)
        by_priority: dict[str, dict[str, int]] = defaultdict(dict)
        oldest: dict[str, datetime] = {}
        for queue, priority, count, offered, first, at_risk, breached in waiting_rows:
            key = queue if queue in breach else UNQUEUED
            waiting[key].update(
                waiting=count, offered=offered, sla_at_risk=at_risk, sla_breached_now=breached
            )
            by_priority[key][str(priority)] = by_priority[key].get(str(priority), 0) + count
            if first is not None and (key not in oldest or first < oldest[key]):
                oldest[key] = first

        (recent,) = await self._tallies(
            s,
            {q.name: q.sla_seconds for q in specs},
            [_W.ended_at >= now - ROLLING_WINDOW],
            _W.queue.in_(names),
            _W.ended_at >= now - ROLLING_WINDOW,
        )
        today = await self._today.refresh(s, names, now)
        groups = await self._agent_groups(s, now)

        report = []
        for spec in specs:
            counts, day = waiting[spec.name], today.get(spec.name, QueueDay())
            day_tally = day.tally(spec.sla_seconds)
            eligible_agents, available_agents = staffing(spec, groups, self.costs)
            report.append(
                {
                    "name": spec.name,
                    "priority": spec.priority,
                    "sla_seconds": spec.sla_seconds,
                    "waiting": counts["waiting"],
                    "waiting_by_priority": dict(sorted(by_priority[spec.name].items())),
                    "offered": counts["offered"],
                    "oldest_enqueued_at": _iso(oldest.get(spec.name)),
                    "longest_wait_seconds": _since(now, oldest.get(spec.name)) or 0.0,
                    "sla_at_risk": counts["sla_at_risk"],
                    "sla_breached_now": counts["sla_breached_now"],
                    "eligible_agents": eligible_agents,
                    "available_agents": available_agents,
                    "service_level": {
                        "rolling_15m": recent.get(spec.name, Tally()).service_level,
                        "today": day_tally.service_level,
                        "answered": day_tally.answered,
                        "answered_within_sla": day_tally.answered_within_sla,
                        "abandoned": day_tally.abandoned_counted,
                    },
                    "average_speed_of_answer_seconds": day_tally.average_speed_of_answer,
                    "wait_p50_seconds": percentile(day.waits, 50),
                    "wait_p90_seconds": percentile(day.waits, 90),
                    "answered_today": day_tally.answered,
                    "abandoned_today": day_tally.abandoned,
                }
            )
        return {
            "queues": report,
            "unqueued": {
                "name": UNQUEUED,
                "waiting": waiting[UNQUEUED]["waiting"],
                "oldest_enqueued_at": _iso(oldest.get(UNQUEUED)),
                "longest_wait_seconds": _since(now, oldest.get(UNQUEUED)) or 0.0,
            },
            "service_level_rule": SERVICE_LEVEL_RULE,
        }

    # -- agents -----------------------------------------------------------------------------

    async def agents(self) -> dict[str, Any]:
        now = self.clock()
        async with self.db.read() as s:
            agents = (
                await s.execute(
                    select(
                        Agent.id,
                        Agent.name,
                        Agent.email,
                        Agent.role,
                        Agent.status,
                        Agent.presence_at,
                        Agent.capacity,
                        Agent.load,
                        Agent.skills,
                        Agent.channel_kinds,
                        Agent.last_assigned_at,
                    )
                    .where(Agent.active)
                    .order_by(Agent.name, Agent.id)
                )
            ).all()
            held_columns = (
                _C.id,
                _C.channel_kind,
                _C.status,
                _C.assigned_cost,
                _C.assigned_at,
                _C.offer_expires_at,
            )
            # An assignee holds capacity while the conversation is active (resolving zeroes the cost);
            # an offered conversation is still waiting and reserves its cost from the offered agent.
            assigned = await s.execute(
                select(_C.assignee_id, *held_columns)
                .where(
                    _C.assignee_id.is_not(None),
                    _C.status.in_(sorted(HOLDS_CAPACITY)),
                    _C.assigned_cost > 0,
                )
                .order_by(_C.id)
            )
            offered = await s.execute(
                select(_C.offered_to, *held_columns)
                .where(WAITING, _C.offered_to.is_not(None))
                .order_by(_C.id)
            )
            held: dict[int | None, list[dict[str, Any]]] = defaultdict(list)
            for rows, is_offer in ((assigned, False), (offered, True)):
                for agent_id, cid, kind, status, cost, assigned_at, expires in rows:
                    held[agent_id].append(
                        {
                            "id": cid,
                            "channel_kind": kind,
                            "status": status,
                            "cost": cost,
                            "assigned_at": _iso(assigned_at),
                            "offered": is_offer,
                            "offer_expires_at": _iso(expires) if is_offer else None,
                        }
                    )

        overview = []
        for a in agents:
            conversations = held.get(a.id, [])
            by_channel: Counter[str] = Counter()
            for conv in conversations:
                by_channel[conv["channel_kind"]] += conv["cost"]
            presence = effective(a.status, a.presence_at, now, self.heartbeat_timeout)
            overview.append(
                {
                    "id": a.id,
                    "name": a.name,
                    "email": a.email,
                    "role": a.role,
                    "status": a.status,
                    "presence": presence.value,
                    "connected": self._connected(a.presence_at, now),
                    "capacity": a.capacity,
                    "load": a.load,
                    "load_by_channel": dict(sorted(by_channel.items())),
                    "conversations": conversations,
                    "active_conversations": sum(1 for c in conversations if not c["offered"]),
                    "offers": sum(1 for c in conversations if c["offered"]),
                    "skills": a.skills or {},
                    "channel_kinds": a.channel_kinds or [],
                    "last_assigned_at": _iso(a.last_assigned_at),
                    "seconds_since_last_assignment": _since(now, a.last_assigned_at),
                }
            )
        return {"agents": overview}

    def _connected(self, presence_at: datetime | None, now: datetime) -> bool:
        return presence_at is not None and presence_at >= now - timedelta(seconds=self.heartbeat_timeout)

    # -- Prometheus -------------------------------------------------------------------------

    async def metrics(self) -> str:
        """The text exposition format 0.0.4 (https://prometheus.io/docs/instrumenting/exposition_formats/)."""
        specs = list(await self._queues())
        now = self.clock()
        async with self.db.read() as s:
            report = await self._queue_report(s, specs, now)
            totals = await self._totals(s, specs, now)
            presence = (await s.execute(select(Agent.status, Agent.presence_at).where(Agent.active))).all()
            loads = (
                await s.execute(
                    select(Agent.id, Agent.load, Agent.capacity).where(Agent.active).order_by(Agent.id)
                )
            ).all()

        queues = report["queues"]
        unqueued = report["unqueued"]
        by_presence = Counter(
            effective(p.status, p.presence_at, now, self.heartbeat_timeout) for p in presence
        )
        out = Exposition()
        out.family(
            "hub_queue_waiting",
            "gauge",
            "Conversations waiting in the queue now, offered ones included.",
            [({"queue": q["name"]}, q["waiting"]) for q in queues]
            + [({"queue": UNQUEUED}, unqueued["waiting"])],
        )
        out.family(
            "hub_queue_longest_wait_seconds",
            "gauge",
            "How long the oldest waiting conversation of the queue has waited.",
            [({"queue": q["name"]}, q["longest_wait_seconds"]) for q in queues]
            + [({"queue": UNQUEUED}, unqueued["longest_wait_seconds"])],
        )
        out.family(
            "hub_queue_available_agents",
            "gauge",
            "Eligible agents online now with room for the queue's cheapest channel.",
            [({"queue": q["name"]}, q["available_agents"]) for q in queues],
        )
        out.family(
            "hub_queue_service_level_ratio",
            "gauge",
            "Answered within the SLA target / (answered + abandoned after "
            f"{SHORT_ABANDON_SECONDS:g} s); absent when the window has neither.",
            [
                ({"queue": q["name"], "window": window}, q["service_level"][key])
                for q in queues
                for window, key in (("15m", "rolling_15m"), ("today", "today"))
            ],
        )
        counters = [(spec.name, totals.get(spec.name, Tally())) for spec in specs]
        out.family(
            "hub_queue_assignments_total",
            "counter",
            "Queue stays answered by an agent.",
            [({"queue": name}, t.answered) for name, t in counters],
        )
        out.family(
            "hub_queue_abandoned_total",
            "counter",
            "Queue stays abandoned (resolved while waiting).",
            [({"queue": name}, t.abandoned) for name, t in counters],
        )
        out.family(
            "hub_queue_sla_breaches_total",
            "counter",
            f"Queue stays answered later than the SLA target or abandoned after {SHORT_ABANDON_SECONDS:g} s.",
            [({"queue": name}, t.breaches) for name, t in counters],
        )
        out.family(
            "hub_agents",
            "gauge",
            "Active agents by effective presence.",
            [({"presence": p.value}, by_presence[p]) for p in Presence],
        )
        out.family(
            "hub_agent_load_ratio",
            "gauge",
            "Share of the agent's capacity in use.",
            [({"agent": str(a.id)}, a.load / a.capacity if a.capacity else 0.0) for a in loads],
        )
        return out.text()

    async def _totals(self, s: AsyncSession, specs: list[QueueSpec], now: datetime) -> dict[str, Tally]:
        """All-time tallies per queue: the days before ``cut`` counted once, the rest each time."""
        targets = {q.name: q.sla_seconds for q in specs}
        names = list(targets)
        cut = midnight(now - HISTORY_SETTLE)
        key = (cut, tuple(sorted(targets.items())))
        if self._history is None or self._history[0] != key:
            (before,) = await self._tallies(
                s, targets, [_W.ended_at < cut], _W.queue.in_(names), _W.ended_at < cut
            )
            self._history = (key, before)
        if cut == midnight(now):
            today = await self._today.refresh(s, names, now)
            since = {name: day.tally(targets[name]) for name, day in today.items()}
        else:  # the first minutes after midnight: yesterday is not in the history yet
            (since,) = await self._tallies(
                s, targets, [_W.ended_at >= cut], _W.queue.in_(names), _W.ended_at >= cut
            )
        history = self._history[1]
        return {name: history.get(name, Tally()) + since.get(name, Tally()) for name in names}

    # -- the live view ----------------------------------------------------------------------

    async def run(
        self,
        publish: Callable[[list[EventRecord]], None],
        interval: float = 1.0,
        watched: Callable[[], bool] = lambda: True,
        stopping: asyncio.Event | None = None,
    ) -> None:
        """Until ``stopping`` is set (checked between reports, see ``hub.lifecycle``): push
        ``queues.updated`` / ``agents.updated`` (live-only, never stored) whenever the report
        changed beyond the clock's own ticking — while ``watched()`` says someone looks; otherwise
        nothing is computed, and the next watcher gets fresh reports at once."""
        last: dict[str, Any] = {}
        reports: tuple[tuple[str, Callable[[], Awaitable[dict[str, Any]]]], ...] = (
            ("queues.updated", self.queues),
            ("agents.updated", self.agents),
        )
        stopping = stopping or asyncio.Event()

        async def rest(seconds: float) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), seconds)

        while not stopping.is_set():
            if not watched():
                last.clear()
                await rest(interval)
                continue
            started = time.monotonic()
            for kind, compute in reports:
                try:
                    payload = await compute()
                except Exception:
                    log.exception("supervision: computing %s failed", kind)
                    continue
                seen = without_clock_fields(payload)
                if seen != last.get(kind):
                    last[kind] = seen
                    publish([EventRecord(type=kind, at=self.clock(), data=payload)])
            # On a large floor a round is not free (thousands of agents and their conversations):
            # rest at least twice as long as it took, so the live view never takes over the process.
            await rest(max(interval, 2 * (time.monotonic() - started)))
