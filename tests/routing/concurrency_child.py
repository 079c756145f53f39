"""The processes of the concurrency test (``tests/routing/test_concurrency.py``), and the world they share.

``python -m tests.routing.concurrency_child router URL --index I --of N --seconds S --seed X``
    One hub's router: its own :class:`Database`, ``Router.run_round`` every ``SWEEP_SECONDS``, and the
    agents whose ``id % N == I`` as if their inboxes were open in this process — connecting,
    disconnecting and choosing away/online at random (``Router.connected`` / ``disconnected`` /
    ``choose_status``), so presence flaps and the away grace period re-queues their conversations.

``python -m tests.routing.concurrency_child manual URL --index I --seconds S --seed X``
    People clicking: manual claims (``claim.assign``), transfers agent -> agent (``Router.transfer``),
    hand-backs to a random queue (``claim.unassign(to_queue=...)``), resolves and reopens (status
    written, then ``claim.status_changed``), accepting and declining offers, all at random and mostly on
    conversations the routers are racing for. A refusal is counted by its error code, never an error.

Both print ``ready``, wait for a line on stdin (the start signal, so every process starts together),
work for ``--seconds`` and print ``result {json}``: what they did and every unexpected exception.
A router also prints ``round START END INDEX WAITING/ASSIGNED/REFUSED`` (wall clock) after each round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from hub.events import record_events
from hub.model import EventRecord, Refused, utcnow
from routing import claim
from routing.config import RoutingSettings
from routing.model import AgentChoice, AssignMode, MatchRule, OnAgentAway, QueueSpec, Step
from routing.queues import QueueStore
from routing.service import SKIPPED_RETRY_SECONDS, Router
from storage.engine import Database
from storage.models import Agent, Contact, Conversation

T = TypeVar("T")

SWEEP_SECONDS = 1.0
HEARTBEAT_TIMEOUT_SECONDS = 15.0  # presence flaps by explicit disconnects and away; refreshes every 5 s
AWAY_GRACE_SECONDS = 1.0
OFFER_TIMEOUT_SECONDS = 2.0
FLAP_SECONDS = 10.0  # each flapping agent changes presence about this often

# The catch-all queue: no skills required, so whether someone could take a conversation waiting in it
# is a simple question the test can ask of the database (channel kind, presence, room).
OPEN_QUEUE = "general"
QUEUES: tuple[QueueSpec, ...] = (
    QueueSpec(
        "voice",
        match=MatchRule(channel_kinds=frozenset({"voice"})),
        required_skills={"phone": 2},
        choice=AgentChoice.LEAST_OCCUPIED,
        on_agent_away=OnAgentAway.REQUEUE,
    ),
    QueueSpec(
        "billing",
        match=MatchRule(contact_attributes={"topic": "billing"}),
        required_skills={"billing": 3},
        priority=2,
        choice=AgentChoice.BEST_PROFICIENCY,
        on_agent_away=OnAgentAway.REQUEUE,
    ),
    QueueSpec(
        "spanish",
        match=MatchRule(languages=frozenset({"es"})),
        required_skills={"spanish": 2},
        steps=(Step(), Step(after_seconds=4.0, overflow_to=OPEN_QUEUE)),
        on_agent_away=OnAgentAway.REQUEUE,
    ),
    QueueSpec(
        "sales",
        match=MatchRule(contact_attributes={"topic": "sales"}),
        required_skills={"sales": 1},
        mode=AssignMode.OFFER,
        offer_timeout_seconds=OFFER_TIMEOUT_SECONDS,
        on_agent_away=OnAgentAway.REQUEUE,
    ),
    QueueSpec(OPEN_QUEUE, on_agent_away=OnAgentAway.REQUEUE),
)
QUEUE_NAMES = tuple(q.name for q in QUEUES)
SKILLS = ("phone", "billing", "spanish", "sales", "tech")
KINDS = ("webchat", "email", "sms", "voice", "xmpp")
KIND_WEIGHTS = (40, 25, 20, 8, 7)
ROUND_COUNTS = ("enqueued", "assigned", "offered", "overflowed", "requeued", "offers_ended", "refused")
# A process still busy this long after its deadline (a round stuck behind locks) is stopped: it
# reports what it did, with ``late_stop`` counted, rather than hang the test.
LATE_STOP_SECONDS = 15.0


def settings() -> RoutingSettings:
    return RoutingSettings(
        sweep_seconds=SWEEP_SECONDS,
        heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_SECONDS,
        away_grace_seconds=AWAY_GRACE_SECONDS,
    )


def make_router(db: Database) -> Router:
    return Router(db, settings(), QueueStore(db), record_events, lambda events: None)


# -- the world: agents, contacts and conversations, written by the test process ------------------


async def seed(db: Database, agents: int, contacts: int, rng: random.Random) -> None:
    """Queues, ``agents`` agents of mixed skills, capacities and channel kinds (chosen status online,
    no inbox open yet: the router processes connect them), and ``contacts`` contacts whose attributes
    send their conversations to the different queues."""
    await QueueStore(db).seed(QUEUES)
    now = utcnow()
    agent_rows = []
    for n in range(agents):
        skills = {s: rng.randint(1, 5) for s in SKILLS if rng.random() < 0.4}
        kinds = [] if rng.random() < 0.6 else sorted(rng.sample(KINDS, rng.randint(1, 3)))
        agent_rows.append(
            {
                "email": f"agent{n}@example.com",
                "name": f"Agent {n}",
                "role": "agent",
                "password_hash": "-",
                "active": True,
                "created_at": now,
                "capacity": rng.choice((50, 100, 100, 150, 200)),
                "load": 0,
                "skills": skills,
                "channel_kinds": kinds,
                "status": "online",
                "presence": "offline",
            }
        )
    contact_rows = []
    for _ in range(contacts):
        attributes: dict[str, Any] = {}
        roll = rng.random()
        if roll < 0.15:
            attributes["topic"] = "billing"
        elif roll < 0.3:
            attributes["topic"] = "sales"
        if rng.random() < 0.1:
            attributes["language"] = "es"
        contact_rows.append(
            {"name": "Customer", "attributes": attributes, "created_at": now, "updated_at": now}
        )
    async with db.write() as s:
        await s.execute(insert(Agent), agent_rows)
        await s.execute(insert(Contact), contact_rows)


async def contact_ids(db: Database) -> list[int]:
    async with db.read() as s:
        return list((await s.execute(select(Contact.id).order_by(Contact.id))).scalars())


async def add_conversations(db: Database, contacts: Sequence[int], rng: random.Random) -> None:
    """New, unowned, unqueued conversations: the routers match them to a queue and route them."""
    now = utcnow()
    rows = [
        {
            "contact_id": contact,
            "channel": kind,
            "channel_kind": kind,
            "address": f"customer-{contact}",
            "status": "open",
            "priority": rng.choice((0, 0, 0, 1, 2)),
            "created_at": now,
            "updated_at": now,
            "last_message_at": now,
        }
        for contact, kind in zip(contacts, rng.choices(KINDS, KIND_WEIGHTS, k=len(contacts)), strict=True)
    ]
    async with db.write() as s:
        await s.execute(insert(Conversation), rows)


# -- what a child reports -----------------------------------------------------------------------


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # unexpected exceptions, with their traceback tail
    round_seconds: list[float] = field(default_factory=list)

    def error(self, where: str) -> None:
        self.counts["errors"] += 1
        if len(self.errors) < 5:
            self.errors.append(f"{where}: {traceback.format_exc()[-1500:]}")

    def result(self) -> dict[str, Any]:
        rounds = sorted(self.round_seconds)
        return {
            "counts": dict(self.counts),
            "errors": self.errors,
            "rounds": len(rounds),
            "round_p50_s": rounds[len(rounds) // 2] if rounds else None,
            "round_max_s": rounds[-1] if rounds else None,
        }


async def _guarded(tally: Tally, where: str, work: Callable[[], Awaitable[T]]) -> T | None:
    """Run one step; a refusal is counted by its code (losing a race is normal), anything else is an
    error the test fails on."""
    try:
        return await work()
    except Refused as exc:
        tally.counts[f"refused.{exc.error}"] += 1
    except Exception:
        tally.error(where)
    return None


# -- a router process ---------------------------------------------------------------------------


async def run_router(db: Database, args: argparse.Namespace, tally: Tally, deadline: float) -> None:
    rng = random.Random(args.seed)
    router = make_router(db)
    async with db.read() as s:
        mine = [
            a
            for a in (await s.execute(select(Agent.id).order_by(Agent.id))).scalars()
            if a % args.of == args.index
        ]
    # A fifth of the agents never flap, so some capacity is always online; the rest change every few
    # seconds: online -> offline (inbox closed) or away, and back.
    steady = set(rng.sample(mine, len(mine) // 5))
    state: dict[int, str] = {}
    for agent in mine:
        if agent in steady or rng.random() < 0.7:
            await _guarded(tally, "connect", functools.partial(router.connected, agent))
            state[agent] = "online"
        else:
            state[agent] = "offline"
    flappers = [a for a in mine if a not in steady]

    async def reconnect(agent: int) -> None:
        await router.choose_status(agent, "online")
        await router.connected(agent)

    async def flap() -> None:
        while time.monotonic() < deadline and flappers:
            await asyncio.sleep(rng.expovariate(len(flappers) / FLAP_SECONDS))
            agent = rng.choice(flappers)
            was = state[agent]
            work: Callable[[], Awaitable[Any]]
            if was == "online" and rng.random() < 0.5:
                work, now_is = functools.partial(router.disconnected, agent), "offline"
            elif was == "online":
                work, now_is = functools.partial(router.choose_status, agent, "away"), "away"
            elif was == "away":
                work, now_is = functools.partial(router.choose_status, agent, "online"), "online"
            else:
                work, now_is = functools.partial(reconnect, agent), "online"
            await _guarded(tally, f"presence {was}->{now_is}", work)
            state[agent] = now_is
            tally.counts[f"presence.{now_is}"] += 1

    flapping = asyncio.get_running_loop().create_task(flap())
    await asyncio.sleep(rng.uniform(0, SWEEP_SECONDS))  # routers out of step, as separate hubs are
    while time.monotonic() < deadline:
        started, wall = time.perf_counter(), time.time()
        report = await _guarded(tally, "run_round", router.run_round)
        if report is not None and report.skipped:
            # Another router holds the turn; as the router's own loop does, try again shortly.
            tally.counts["round.skipped"] += 1
            await asyncio.sleep(SKIPPED_RETRY_SECONDS * rng.uniform(0.5, 1.5))
            continue
        tally.round_seconds.append(time.perf_counter() - started)
        # The test counts the rounds that ran wholly between two of its checks (wall clock, one machine).
        done = "-" if report is None else f"{report.waiting}/{report.assigned}/{report.refused}"
        print(f"round {wall:.6f} {time.time():.6f} {args.index} {done}", flush=True)
        if report is not None:
            for name in ROUND_COUNTS:
                tally.counts[f"round.{name}"] += getattr(report, name)
        await asyncio.sleep(SWEEP_SECONDS)
    await flapping


# -- a manual process -----------------------------------------------------------------------------


@dataclass
class Seen:
    """What this process last read: enough to pick targets; the claim path re-checks everything."""

    waiting: list[int] = field(default_factory=list)
    assigned: list[tuple[int, int]] = field(default_factory=list)  # (conversation, assignee)
    offered: list[tuple[int, int]] = field(default_factory=list)  # (conversation, offered to)
    resolved: list[int] = field(default_factory=list)
    agents: list[int] = field(default_factory=list)
    with_room: list[int] = field(default_factory=list)


async def look(db: Database) -> Seen:
    seen = Seen()
    async with db.read() as s:
        rows = (
            await s.execute(
                select(
                    Conversation.id,
                    Conversation.status,
                    Conversation.assignee_id,
                    Conversation.offered_to,
                    Conversation.enqueued_at,
                )
            )
        ).all()
        agents = (await s.execute(select(Agent.id, Agent.load, Agent.capacity))).all()
    for r in rows:
        if r.status == "resolved":
            seen.resolved.append(r.id)
        elif r.offered_to is not None:
            seen.offered.append((r.id, r.offered_to))
        elif r.assignee_id is not None:
            seen.assigned.append((r.id, r.assignee_id))
        elif r.enqueued_at is not None:
            seen.waiting.append(r.id)
    seen.agents = [a.id for a in agents]
    seen.with_room = [a.id for a in agents if a.load + 25 <= a.capacity] or seen.agents
    return seen


def _resolve(s: Session, conversation_id: int) -> list[EventRecord]:
    now = utcnow()
    done = s.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id, Conversation.status != "resolved")
        .values(status="resolved", resolved_at=now, updated_at=now)
    )
    if not getattr(done, "rowcount", 0):
        raise Refused("already_resolved")
    return claim.status_changed(s, conversation_id, "resolved", now=now)


def _reopen(s: Session, conversation_id: int) -> list[EventRecord]:
    now = utcnow()
    done = s.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id, Conversation.status == "resolved")
        .values(status="open", resolved_at=None, updated_at=now)
    )
    if not getattr(done, "rowcount", 0):
        raise Refused("not_resolved")
    return claim.status_changed(s, conversation_id, "open", now=now)


def _assign(s: Session, cid: int, agent: int, costs: Mapping[str, int]) -> list[EventRecord]:
    return claim.assign(s, cid, agent, costs=costs, now=utcnow(), reason="manual", by=agent)


def _hand_back(s: Session, cid: int, owner: int, queue: str) -> list[EventRecord]:
    return claim.unassign(s, cid, now=utcnow(), reason="transfer", by=owner, to_queue=queue)


def _accept(s: Session, cid: int, agent: int) -> list[EventRecord]:
    return claim.accept(s, cid, agent, version=None, now=utcnow())


def _decline(s: Session, cid: int, agent: int) -> list[EventRecord]:
    return claim.decline(s, cid, agent, now=utcnow(), reason="declined")


Work = Callable[[], Awaitable[list[EventRecord]]]


def pick_manual(seen: Seen, rng: random.Random, db: Database, router: Router) -> tuple[str, Work] | None:
    """One person's next click, by name, and the write it makes (with its events recorded); a transfer
    to another agent goes through ``Router.transfer``, as the web layer's does."""

    def write(fn: Callable[..., list[EventRecord]], **kwargs: Any) -> Work:
        return functools.partial(db.run_write, functools.partial(_recorded, functools.partial(fn, **kwargs)))

    roll = rng.random()
    if roll < 0.45 and (seen.assigned or seen.offered):
        return "resolve", write(_resolve, conversation_id=rng.choice(seen.assigned or seen.offered)[0])
    if roll < 0.6 and seen.waiting:  # race the routers for a waiting conversation
        cid, agent = rng.choice(seen.waiting), rng.choice(seen.with_room)
        return "assign", write(_assign, cid=cid, agent=agent, costs=router.settings.costs)
    if roll < 0.72 and seen.assigned:
        (cid, owner), to = rng.choice(seen.assigned), rng.choice(seen.with_room)
        return "transfer_agent", functools.partial(router.transfer, cid, by=owner, agent_id=to)
    if roll < 0.82 and seen.assigned:
        (cid, owner), queue = rng.choice(seen.assigned), rng.choice(QUEUE_NAMES)
        return "transfer_queue", write(_hand_back, cid=cid, owner=owner, queue=queue)
    if roll < 0.87 and seen.resolved:
        return "reopen", write(_reopen, conversation_id=rng.choice(seen.resolved))
    if seen.offered:
        cid, agent = rng.choice(seen.offered)
        if rng.random() < 0.7:
            return "accept", write(_accept, cid=cid, agent=agent)
        return "decline", write(_decline, cid=cid, agent=agent)
    return None


def _recorded(write: Callable[[Session], list[EventRecord]], s: Session) -> list[EventRecord]:
    return record_events(s, write(s))


async def run_manual(db: Database, args: argparse.Namespace, tally: Tally, deadline: float) -> None:
    rng = random.Random(args.seed)
    router = make_router(db)  # never started: used for its transfer(), as the web layer does
    seen, looked = await look(db), time.monotonic()
    while time.monotonic() < deadline:
        if time.monotonic() - looked > 0.3:
            seen, looked = await look(db), time.monotonic()
        picked = pick_manual(seen, rng, db, router)
        if picked is None:
            await asyncio.sleep(0.05)
            continue
        op, work = picked
        tally.counts[f"{op}.tried"] += 1
        if await _guarded(tally, op, work) is not None:
            tally.counts[f"{op}.done"] += 1
        await asyncio.sleep(rng.uniform(0.01, 0.04))


# -- entry point ---------------------------------------------------------------------------------


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.routing.concurrency_child")
    parser.add_argument("role", choices=("router", "manual"))
    parser.add_argument("url")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--of", type=int, default=1, help="router processes in all")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    db = Database(args.url, pool_size=3)
    tally = Tally()
    try:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        deadline = time.monotonic() + args.seconds
        run = run_router if args.role == "router" else run_manual
        try:
            await asyncio.wait_for(run(db, args, tally, deadline), args.seconds + LATE_STOP_SECONDS)
        except TimeoutError:
            tally.counts["late_stop"] += 1
        except Exception:
            tally.error(args.role)
        # Background writes the router started (its "nobody eligible" signals) finish before we go.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), 10)
    finally:
        await db.dispose()
    print("result " + json.dumps(tally.result()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
