"""Routing: how fast the real router drains a backlog, and how soon it assigns a new arrival.

World: A online agents (random skills out of S names at proficiency 1-5, capacities 50-200, most
taking every channel kind), Q queues (each requiring one or two skills at a minimum level, matching
conversations by a contact attribute, with a random agent choice), and N conversations already
waiting across them (mixed channel kinds, enqueued over the last ten minutes). A fresh database.

``route``: one ``Router`` (the hub's, with its claim path and event recording) runs ``run_round()``
until a round assigns nothing more (or every conversation is assigned).

* ``assignments_per_s``: assignments / the wall time of all those rounds.
* ``p50_ms``/``p90_ms``/``p99_ms``/``max_ms``: per-assignment latency, from the start of the routing
  round that decided it (before its snapshot is read) to the commit of the claim transaction that
  made it (``RoundReport.assign_latencies``). A round claims in chunks, so the last assignments of a
  big round wait for the earlier chunks: this is the latency a backlog sees.

``route_arrival``: with the backlog left in place, M new conversations arrive one at a time, each in
a queue where an eligible agent has room for it. Each is committed unqueued (as ingest leaves it),
then ``run_round(only={its queue})`` matches, enqueues, plans and claims it.

* ``p50_ms``/``p99_ms``/...: from the new conversation's commit to the return of that round, just
  after the assignment's commit (the round's presence and housekeeping steps included).

Progress goes to stderr; a timing never fails the run.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import insert, select

from bench.common import emit, latency_summary, progress, rounded
from bench.ingest import postgres_reachable, redacted
from bench.limit import migrated
from hub.events import record_events
from hub.model import utcnow
from routing.claim import cost_of
from routing.config import RoutingSettings
from routing.model import AgentChoice, MatchRule, QueueSpec
from routing.queues import QueueStore
from routing.service import Router, serves
from storage.engine import Database
from storage.ids import allocate_ids
from storage.models import Agent, Contact, Conversation, QueueWait

KINDS = ("webchat", "email", "sms", "voice", "xmpp")
KIND_WEIGHTS = (40, 30, 15, 5, 10)
SEGMENT = "segment"  # the contact attribute a queue matches on

# Nobody's heartbeat expires and nobody goes away during a run: the bench measures routing only.
SETTINGS = RoutingSettings(heartbeat_timeout_seconds=24 * 3600.0, away_grace_seconds=24 * 3600.0)


@dataclass(frozen=True, slots=True)
class RouteOptions:
    agents: int
    queued: int
    queues: int
    skills: int
    arrivals: int
    databases: tuple[str, ...]
    postgres_url: str
    seed: int = 11


def make_queues(opts: RouteOptions, rng: random.Random) -> list[QueueSpec]:
    skills = [f"skill{i:02d}" for i in range(opts.skills)]
    return [
        QueueSpec(
            name=f"q{i:03d}",
            match=MatchRule(contact_attributes={SEGMENT: f"q{i:03d}"}),
            required_skills={s: rng.randint(1, 3) for s in rng.sample(skills, rng.choice((1, 1, 2)))},
            priority=rng.randint(0, 3),
            choice=rng.choice(list(AgentChoice)),
        )
        for i in range(opts.queues)
    ]


async def populate(db: Database, opts: RouteOptions, queues: list[QueueSpec], rng: random.Random) -> None:
    """Queues, agents and the waiting backlog, written straight to the tables in a few transactions."""
    await QueueStore(db).seed(queues)
    now = utcnow()
    skills = [f"skill{i:02d}" for i in range(opts.skills)]
    agents = [
        {
            "email": f"agent{n}@bench.example",
            "name": f"Agent {n}",
            "role": "agent",
            "password_hash": "-",
            "active": True,
            "created_at": now,
            "capacity": rng.choice((50, 100, 100, 150, 200)),
            "load": 0,
            "skills": {s: rng.randint(1, 5) for s in rng.sample(skills, min(len(skills), rng.randint(3, 8)))},
            "channel_kinds": [] if rng.random() < 0.7 else sorted(rng.sample(KINDS, rng.randint(1, 3))),
            "status": "online",
            "presence": "online",
            "presence_at": now,
            "presence_changed_at": now - timedelta(hours=1),
            "last_assigned_at": now - timedelta(seconds=rng.uniform(0, 3600)),
        }
        for n in range(opts.agents)
    ]
    async with db.write() as s:
        await s.execute(insert(Agent), agents)
    for start in range(0, opts.queued, 2000):
        size = min(2000, opts.queued - start)

        def backlog(s: Any, size: int = size) -> None:
            contact_ids = allocate_ids(s, Contact, size)
            conversation_ids = allocate_ids(s, Conversation, size)
            wait_ids = allocate_ids(s, QueueWait, size)
            picked = [rng.choice(queues).name for _ in range(size)]
            kinds = rng.choices(KINDS, KIND_WEIGHTS, k=size)
            since = [now - timedelta(seconds=rng.uniform(0, 600)) for _ in range(size)]
            s.execute(
                insert(Contact),
                [
                    {
                        "id": c,
                        "name": "Customer",
                        "attributes": {SEGMENT: q},
                        "created_at": now,
                        "updated_at": now,
                    }
                    for c, q in zip(contact_ids, picked, strict=True)
                ],
            )
            s.execute(
                insert(Conversation),
                [
                    {
                        "id": cid,
                        "contact_id": contact,
                        "channel": kind,
                        "channel_kind": kind,
                        "address": f"customer-{contact}",
                        "status": "open",
                        "priority": rng.choice((0, 0, 0, 1, 2)),
                        "created_at": at,
                        "updated_at": at,
                        "last_message_at": at,
                        "queue": queue,
                        "enqueued_at": at,
                    }
                    for cid, contact, kind, queue, at in zip(
                        conversation_ids, contact_ids, kinds, picked, since, strict=True
                    )
                ],
            )
            s.execute(
                insert(QueueWait),
                [
                    {
                        "id": wid,
                        "conversation_id": cid,
                        "queue": queue,
                        "channel_kind": kind,
                        "priority": 0,
                        "enqueued_at": at,
                    }
                    for wid, cid, kind, queue, at in zip(
                        wait_ids, conversation_ids, kinds, picked, since, strict=True
                    )
                ],
            )

        await db.run_write(backlog)


async def drain(router: Router, opts: RouteOptions, label: str) -> tuple[int, int, float, list[float]]:
    """Rounds until one assigns nothing: (assigned, rounds, seconds, latencies)."""
    assigned = rounds = 0
    seconds = 0.0
    latencies: list[float] = []
    while assigned < opts.queued:
        started = time.perf_counter()
        report = await router.run_round()
        seconds += time.perf_counter() - started
        rounds += 1
        assigned += report.assigned
        latencies += report.assign_latencies
        progress(
            f"{label}: round {rounds}: {report.assigned} assigned of {report.waiting} waiting, "
            f"{report.refused} refused, {time.perf_counter() - started:.2f} s"
        )
        if report.assigned == 0:
            break
    return assigned, rounds, seconds, latencies


class Openings:
    """Which (queue, channel kind) has an eligible online agent with room for one more conversation.
    Who serves a queue is worked out once (skills do not change during a run); loads are read fresh."""

    def __init__(self, db: Database, queues: list[QueueSpec]) -> None:
        self.db = db
        self.queues = queues
        self.members: dict[str, list[tuple[int, frozenset[str], int]]] = {}

    async def load(self) -> None:
        async with self.db.read() as s:
            agents = (
                await s.execute(
                    select(Agent.id, Agent.skills, Agent.channel_kinds, Agent.capacity).where(Agent.active)
                )
            ).all()
        for q in self.queues:
            self.members[q.name] = [
                (a.id, frozenset(a.channel_kinds or ()), a.capacity)
                for a in agents
                if serves(q, a.skills or {}, frozenset())
            ]

    async def pick(self, rng: random.Random, tries: int = 2000) -> tuple[str, str] | None:
        async with self.db.read() as s:
            loads = dict((await s.execute(select(Agent.id, Agent.load))).all())
        for _ in range(tries):
            queue, kind = rng.choice(self.queues).name, rng.choice(KINDS)
            cost = cost_of(SETTINGS.costs, kind)
            for agent, kinds, capacity in self.members[queue]:
                if (not kinds or kind in kinds) and loads[agent] + cost <= capacity:
                    return queue, kind
        return None


async def arrive(db: Database, queue: str, kind: str) -> None:
    """One new conversation, committed unqueued, as ingest leaves it."""
    now = utcnow()
    async with db.write() as s:
        contact = Contact(name="Newcomer", attributes={SEGMENT: queue}, created_at=now, updated_at=now)
        s.add(contact)
        await s.flush()
        s.add(
            Conversation(
                contact_id=contact.id,
                channel=kind,
                channel_kind=kind,
                address=f"newcomer-{contact.id}",
                status="open",
                priority=0,
                created_at=now,
                updated_at=now,
                last_message_at=now,
            )
        )


async def arrivals(
    db: Database, router: Router, opts: RouteOptions, queues: list[QueueSpec], rng: random.Random, label: str
) -> tuple[list[float], int]:
    """(latencies of the assigned arrivals, arrivals nobody took)."""
    latencies: list[float] = []
    missed = 0
    openings = Openings(db, queues)
    await openings.load()
    for i in range(opts.arrivals):
        found = await openings.pick(rng)  # fresh loads each time: the previous arrival took a place
        if found is None:
            progress(f"{label}: no queue has a free agent left after {i} arrivals")
            break
        queue, kind = found
        await arrive(db, queue, kind)
        committed = time.perf_counter()
        report = await router.run_round(only={queue})
        if report.assigned == 1:
            latencies.append(time.perf_counter() - committed)
        else:
            missed += 1
    return latencies, missed


async def settle() -> None:
    """Let the router's background writes (its "nobody eligible" signals) finish before we go."""
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and t.get_name() != "router"]
    if pending:
        await asyncio.wait(pending, timeout=60)


async def bench_one(db_name: str, url: str, opts: RouteOptions) -> list[dict[str, Any]]:
    rng = random.Random(opts.seed)
    queues = make_queues(opts, rng)
    db = Database(url)
    label = f"route/{db_name}"
    try:
        progress(f"{label}: {opts.agents} agents, {opts.queues} queues, {opts.queued} waiting conversations")
        await populate(db, opts, queues, rng)
        router = Router(db, SETTINGS, QueueStore(db), record_events, lambda events: None)
        assigned, rounds, seconds, latencies = await drain(router, opts, label)
        await settle()
        backlog = {
            "bench": "route",
            "db": db_name,
            "agents": opts.agents,
            "queued": opts.queued,
            "queues": opts.queues,
            "skills": opts.skills,
            "assigned": assigned,
            "rounds": rounds,
            "seconds": rounded(seconds),
            **latency_summary(latencies),
            "assignments_per_s": rounded(assigned / seconds if seconds else 0.0, 1),
        }
        emit(backlog)
        progress(f"{label}: {opts.arrivals} arrivals, one at a time")
        arrived, missed = await arrivals(db, router, opts, queues, rng, label)
        await settle()
        arrival = {
            "bench": "route_arrival",
            "db": db_name,
            "arrivals": len(arrived) + missed,
            "assigned": len(arrived),
            "backlog_waiting": opts.queued - assigned,
            **latency_summary(arrived),
        }
        emit(arrival)
        return [backlog, arrival]
    finally:
        await db.dispose()


async def run(opts: RouteOptions) -> list[dict[str, Any]]:
    figures: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hub-bench-route-") as tmp:
        for db_name in opts.databases:
            if db_name == "sqlite":
                url = f"sqlite+aiosqlite:///{Path(tmp) / 'route.db'}"
                await migrated(url)
                figures += await bench_one("sqlite", url, opts)
            else:
                figures += await bench_postgres(opts, Path(tmp).name)
    return figures


async def bench_postgres(opts: RouteOptions, tag: str) -> list[dict[str, Any]]:
    admin = opts.postgres_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    why_not = await postgres_reachable(admin)
    if why_not is None:
        name = f"hub_bench_route_{tag.lower().replace('-', '_')}"
        conn = await asyncpg.connect(admin)
        try:
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.PostgresError as exc:
                why_not = f"cannot create a private database on {redacted(admin)}: {exc}"
            else:
                url = (
                    admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{name}"
                )
                await migrated(url)
                return await bench_one("postgresql", url, opts)
        finally:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.close()
    progress(f"route/postgresql skipped: {why_not}")
    skipped = [{"bench": b, "db": "postgresql", "skipped": why_not} for b in ("route", "route_arrival")]
    for figure in skipped:
        emit(figure)
    return skipped
