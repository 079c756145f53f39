"""The router's guarantees under real concurrency: many router processes, people claiming and
transferring by hand, agents flapping online and offline, all against one database.

Processes (``tests/routing/concurrency_child.py``): N routers, each with its own ``Database``, running
``Router.run_round`` every ``SWEEP_SECONDS`` and keeping a share of the agents' inboxes open (they
connect, disconnect and go away at random); M manual processes claiming, transferring agent -> agent
and agent -> queue, resolving, reopening, accepting and declining offers at random. This process
seeds the world, adds conversations throughout the run, and checks the database every ``CHECK_EVERY``
seconds in one snapshot (REPEATABLE READ on PostgreSQL, a read transaction on SQLite's WAL).

The rules, each counted as violations that must all be 0:

* **overrun**: an agent with ``load < 0`` or ``load > capacity``.
* **ledger**: an agent whose ``load`` differs from the units its conversations hold, i.e. the sum of
  ``assigned_cost`` over conversations with ``offered_to`` = the agent, or with no offer and
  ``assignee_id`` = the agent. Also: a cost held by a conversation with no assignee and no offer,
  or by a resolved conversation.
* **double**: a conversation both waiting (``enqueued_at`` set) and assigned, or both assigned and
  offered; and, after the run, a broken chain in the event record: replaying each conversation's
  ``conversation.assigned`` events in id order, every event's ``previous_assignee_id`` must be the
  ``assignee_id`` of the one before (None at first), and the last one's the row's ``assignee_id`` —
  a break means two owners at once, or an owner change nobody recorded.
* **starved**: a conversation left waiting while someone could take it. At a check at time t, a
  conversation C and an agent A form a *starved pair* when C waits in the skill-less queue
  ``general`` (not offered, active) since at least ``WAIT_WINDOW`` = 2 sweeps + 0.5 s before t, and A
  is active, online since at least ``WAIT_WINDOW`` before t (``presence`` online and
  ``presence_changed_at`` that old), takes C's channel kind, has not declined C, and has room for it
  (``load + cost <= capacity``). A pair first seen by the check that ended at t1, and seen again by
  every check since up to one beginning at t2, is a violation when t2 - t1 is longer than the sweep
  interval *and* at least ``ROUNDS_TO_ACT`` (3) router rounds ran wholly between t1 and t2 (each
  router prints the wall-clock start and end of its rounds). A round that starts after t1 sees C
  waiting and A with room, so it assigns C or fills A, unless it loses a race (its chosen agent's row
  is locked, or a snapshot went stale); losing three rounds in a row is not a race any more. Counting
  rounds rather than seconds keeps the rule true on a loaded machine, where a round may take seconds;
  how long pairs lasted (seconds and rounds) and the round durations are printed. The rule applies
  only while every router runs; a conversation counts once.

Work must really happen: on PostgreSQL over 1,500 assignments and dozens of refused claims (races lost to
another process), counted from the event record and the processes' own tallies. One summary line is
printed (even without ``-s``); a failure lists the first violations of each kind and the processes'
unexpected exceptions.

Run: ``.venv/bin/python -m pytest tests/routing/test_concurrency.py`` (PostgreSQL: the server on
127.0.0.1:5432, ``$HUB_TEST_DATABASE_URL``, or a private one, see ``tests/peers/postgres.py``; the
test makes and drops a scratch database of its own; skipped with the reason when there is none).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from hub.model import EventType, utcnow
from routing.claim import HOLDS_CAPACITY, cost_of
from routing.model import Presence
from storage.engine import Database
from storage.migrate import upgrade
from storage.models import Agent, Conversation, Event
from tests.peers.postgres import PostgresServer, create_database, drop_database
from tests.routing import concurrency_child as world

ROOT = Path(__file__).resolve().parents[2]
CHILD = ["-m", "tests.routing.concurrency_child"]
CHECK_EVERY = 0.2
WAIT_WINDOW = timedelta(seconds=2 * world.SWEEP_SECONDS + 0.5)
ROUNDS_TO_ACT = 3
COSTS = world.settings().costs


@dataclass(frozen=True)
class Size:
    routers: int
    manual: int
    agents: int
    conversations: int
    seconds: float
    # Proof that the run exercised something: assignments in the event record, and refusals (races
    # lost, offers gone stale, agents full) counted by the processes.
    min_assignments: int
    min_refused: int


@dataclass
class Findings:
    violations: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # the first few of each kind
    checks: int = 0
    longest_starved: float = 0.0  # seconds a starved pair lasted, the longest seen
    most_rounds_starved: int = 0  # whole router rounds a starved pair lasted, the most seen
    # (conversation, agent) -> when first seen starved, kept only while seen at every check since.
    starved_pairs: dict[tuple[int, int], float] = field(default_factory=dict)
    starved: set[int] = field(default_factory=set)  # conversations reported starved (once each)

    def add(self, kind: str, detail: str) -> None:
        self.violations[kind] += 1
        if self.violations[kind] <= 6:
            self.examples.append(f"{kind}: {detail}")


# -- the checks -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def snapshot(db: Database) -> AsyncIterator[AsyncConnection]:
    """One consistent read of the whole database."""
    async with db.reader.connect() as conn:
        if not db.is_sqlite:
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            yield conn


async def check(db: Database, findings: Findings, *, rounds: list[Round] | None) -> None:
    """One check of every rule; the starvation rule too when given the routers' rounds so far."""
    t = utcnow()  # taken before the snapshot: the waiting thresholds below only get stricter
    began = time.time()
    starvation = rounds is not None
    c = Conversation.__table__.c
    async with snapshot(db) as conn:
        agents = (
            await conn.execute(
                select(
                    Agent.id,
                    Agent.load,
                    Agent.capacity,
                    Agent.presence,
                    Agent.presence_changed_at,
                    Agent.channel_kinds,
                ).where(Agent.active)
            )
        ).all()
        holder = func.coalesce(c.offered_to, c.assignee_id)
        held = dict(
            (
                await conn.execute(
                    select(holder, func.sum(c.assigned_cost)).where(c.assigned_cost != 0).group_by(holder)
                )
            ).all()
        )
        odd = (
            await conn.execute(
                select(c.id, c.status, c.assignee_id, c.offered_to, c.enqueued_at, c.assigned_cost).where(
                    (c.assignee_id.is_not(None) & (c.enqueued_at.is_not(None) | c.offered_to.is_not(None)))
                    | ((c.assigned_cost != 0) & c.assignee_id.is_(None) & c.offered_to.is_(None))
                    | ((c.assigned_cost != 0) & c.status.not_in(sorted(HOLDS_CAPACITY)))
                )
            )
        ).all()
        waiting: Sequence[Any] = ()
        if starvation:
            waiting = (
                await conn.execute(
                    select(c.id, c.channel_kind, c.declined_by).where(
                        c.queue == world.OPEN_QUEUE,
                        c.enqueued_at.is_not(None),
                        c.enqueued_at <= t - WAIT_WINDOW,
                        c.assignee_id.is_(None),
                        c.offered_to.is_(None),
                        c.status.in_(sorted(HOLDS_CAPACITY)),
                    )
                )
            ).all()
    ended = time.time()
    findings.checks += 1
    for a in agents:
        if not 0 <= a.load <= a.capacity:
            findings.add("overrun", f"agent {a.id} load {a.load} capacity {a.capacity}")
        if a.load != held.get(a.id, 0):
            findings.add(
                "ledger", f"agent {a.id} load {a.load} but its conversations hold {held.get(a.id, 0)}"
            )
    for r in odd:
        if r.assignee_id is not None and r.enqueued_at is not None:
            findings.add("double", f"conversation {r.id} waits in a queue and is assigned to {r.assignee_id}")
        elif r.assignee_id is not None and r.offered_to is not None:
            findings.add(
                "double", f"conversation {r.id} is assigned to {r.assignee_id}, offered to {r.offered_to}"
            )
        else:
            findings.add(
                "ledger", f"conversation {r.id} ({r.status}, no holder or resolved) holds {r.assigned_cost}"
            )
    if rounds is not None:
        starved_pairs(findings, Moment(t, began, ended), agents, waiting, rounds)
    else:
        findings.starved_pairs.clear()  # a gap in the watch breaks every run of checks


@dataclass(frozen=True)
class Moment:
    """When a check looked: ``at`` for the waiting thresholds; its snapshot lies between ``began``
    and ``ended`` (wall clock, comparable with the routers' round lines)."""

    at: datetime
    began: float
    ended: float


def starved_pairs(
    findings: Findings,
    moment: Moment,
    agents: Sequence[Any],
    waiting: Sequence[Any],
    rounds: list[Round],
) -> None:
    """Keep the starved pairs of this check (see the module docstring). A pair first seen by the check
    that ended at t1 and seen by every check since, this one beginning at t2, is a violation (once)
    when t2 - t1 > ``SWEEP_SECONDS`` and ``ROUNDS_TO_ACT`` router rounds ran wholly between t1 and t2."""
    ready = [
        a
        for a in agents
        if a.presence == Presence.ONLINE.value
        and (a.presence_changed_at is None or a.presence_changed_at <= moment.at - WAIT_WINDOW)
    ]
    complete: dict[float, list[Round]] = {}  # t1 -> rounds wholly inside (t1, this check)
    current: dict[tuple[int, int], float] = {}
    for w in waiting:
        cost = cost_of(COSTS, w.channel_kind)
        declined = set(w.declined_by or ())
        for a in ready:
            if a.load + cost > a.capacity or a.id in declined:
                continue
            if a.channel_kinds and w.channel_kind not in a.channel_kinds:
                continue
            pair = (w.id, a.id)
            t1 = current[pair] = findings.starved_pairs.get(pair, moment.ended)
            span = moment.began - t1
            if span <= 0:
                continue
            if t1 not in complete:
                complete[t1] = [r for r in rounds if r.start > t1 and r.end < moment.began]
            inside = complete[t1]
            findings.longest_starved = max(findings.longest_starved, span)
            findings.most_rounds_starved = max(findings.most_rounds_starved, len(inside))
            if span > world.SWEEP_SECONDS and len(inside) >= ROUNDS_TO_ACT and w.id not in findings.starved:
                findings.starved.add(w.id)
                findings.add(
                    "starved",
                    f"conversation {w.id} ({w.channel_kind}) waited in {world.OPEN_QUEUE} through "
                    f"{len(inside)} whole router rounds ({span:.1f} s; waiting/assigned/refused: "
                    f"{', '.join(r.did for r in inside)}) while agent {a.id} was online with room for it "
                    f"(load {a.load} + {cost} <= {a.capacity})",
                )
    findings.starved_pairs = current


async def replay_assignments(db: Database, findings: Findings) -> Counter[str]:
    """The event-record check (see the module docstring); returns assignments by reason."""
    c = Conversation.__table__.c
    async with db.read() as s:
        events = (
            await s.execute(
                select(Event.id, Event.conversation_id, Event.data)
                .where(Event.type == EventType.CONVERSATION_ASSIGNED.value)
                .order_by(Event.id)
            )
        ).all()
        rows = dict((await s.execute(select(c.id, c.assignee_id))).all())
    owner: dict[int, int | None] = {}
    reasons: Counter[str] = Counter()
    for e in events:
        previous, assignee = e.data.get("previous_assignee_id"), e.data.get("assignee_id")
        if previous != owner.get(e.conversation_id):
            findings.add(
                "double",
                f"event {e.id}: conversation {e.conversation_id} went {previous} -> {assignee}, "
                f"but its owner was {owner.get(e.conversation_id)}",
            )
        owner[e.conversation_id] = assignee
        if assignee is not None:
            reasons[str(e.data.get("reason"))] += 1
    for cid, assignee in rows.items():
        if owner.get(cid) != assignee:
            findings.add(
                "double", f"conversation {cid} is assigned to {assignee}; its events say {owner.get(cid)}"
            )
    return reasons


# -- the processes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    """One router round, as its process printed it: wall-clock start and end, and what it did."""

    start: float
    end: float
    did: str  # "router-I: waiting/assigned/refused"


@dataclass
class Child:
    """One child process and what it said on stdout (see ``concurrency_child``)."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path
    rounds: list[Round]  # shared by all routers
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    result: dict[str, Any] | None = None
    other: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if line == "ready":
                self.ready.set()
            elif line.startswith("round "):
                _, start, end, router, did = line.split()
                self.rounds.append(Round(float(start), float(end), f"router-{router}: {did}"))
            elif line.startswith("result "):
                self.result = json.loads(line.removeprefix("result "))
            else:
                self.other.append(line)

    def tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name}: stdout {self.other[-5:]}, stderr:\n{text[-3000:]}"


async def start_children(url: str, size: Size, tmp: Path, rounds: list[Round]) -> list[Child]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    roles = [("router", i) for i in range(size.routers)] + [("manual", i) for i in range(size.manual)]
    children = []
    for role, i in roles:
        log = tmp / f"{role}-{i}.log"
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *CHILD,
                role,
                url,
                "--index",
                str(i),
                "--of",
                str(size.routers),
                "--seconds",
                str(size.seconds),
                "--seed",
                str(100 * (role == "manual") + i),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                cwd=ROOT,
                env=env,
            )
        child = Child(f"{role}-{i}", proc, log, rounds)
        child.reader = asyncio.get_running_loop().create_task(child.read())
        children.append(child)
    return children


async def go(children: list[Child]) -> None:
    """Start everyone together, once every process is up (imports take a while on a busy machine)."""
    for child in children:
        assert child.reader is not None
        waiter = asyncio.ensure_future(child.ready.wait())
        await asyncio.wait({waiter, child.reader}, timeout=90, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        assert child.ready.is_set(), f"{child.name} did not start\n{child.tail()}"
    for child in children:
        assert child.proc.stdin is not None
        child.proc.stdin.write(b"go\n")
        await child.proc.stdin.drain()


async def finish(children: list[Child]) -> None:
    """Wait for every process to report (they stop themselves, late ones included), then reap them."""
    try:
        for child in children:
            assert child.reader is not None
            await asyncio.wait_for(child.reader, world.LATE_STOP_SECONDS + 30)
            await asyncio.wait_for(child.proc.wait(), 10)
            assert child.result is not None, f"{child.name} ended without a result\n{child.tail()}"
    finally:
        for child in children:
            if child.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                await child.proc.wait()
            if child.reader is not None:
                child.reader.cancel()


# -- the run ----------------------------------------------------------------------------------------


async def exercise(url: str, size: Size, tmp: Path) -> tuple[Findings, Counter[str], list[Child]]:
    db = Database(url)
    try:
        await upgrade(db)
        rng = random.Random(2024)
        await world.seed(db, size.agents, size.conversations, rng)
        contacts = await world.contact_ids(db)
        rounds: list[Round] = []
        children = await start_children(url, size, tmp, rounds)
        try:
            await go(children)
            findings = await watch(db, size, contacts, rng, children, rounds)
        finally:
            await finish(children)
        await check(db, findings, rounds=None)
        reasons = await replay_assignments(db, findings)
        return findings, reasons, children
    finally:
        await db.dispose()


async def watch(
    db: Database,
    size: Size,
    contacts: list[int],
    rng: random.Random,
    children: list[Child],
    rounds: list[Round],
) -> Findings:
    """Add conversations over the first three quarters of the run and check every ``CHECK_EVERY``
    seconds until the run ends; the starvation rule only while every router is at work."""
    findings = Findings()
    started = time.monotonic()
    routers_until = started + size.seconds - 0.5

    async def arrivals() -> None:
        batches = max(1, int(size.seconds * 0.75 / 0.1))
        per_batch = -(-len(contacts) // batches)
        for i in range(0, len(contacts), per_batch):
            await world.add_conversations(db, contacts[i : i + per_batch], rng)
            await asyncio.sleep(0.1)

    adding = asyncio.get_running_loop().create_task(arrivals())
    try:
        while time.monotonic() < started + size.seconds:
            tick = time.monotonic()
            all_running = all(child.proc.returncode is None for child in children)
            await check(db, findings, rounds=rounds if all_running and tick < routers_until else None)
            await asyncio.sleep(max(0.0, CHECK_EVERY - (time.monotonic() - tick)))
        await adding
    finally:
        adding.cancel()
    return findings


def summarise(name: str, size: Size, findings: Findings, reasons: Counter[str], children: list[Child]) -> str:
    routers: Counter[str] = Counter()
    manual: Counter[str] = Counter()
    for child in children:
        assert child.result is not None
        (routers if child.name.startswith("router") else manual).update(child.result["counts"])
    refused_by_manual = {k.removeprefix("refused."): v for k, v in manual.items() if k.startswith("refused.")}
    manual_done = sum(v for k, v in manual.items() if k.endswith(".done"))
    durations = sorted(r.end - r.start for r in children[0].rounds)
    presence = sum(v for k, v in routers.items() if k.startswith("presence."))
    return (
        f"concurrency[{name}]: {size.routers} routers + {size.manual} manual, {size.agents} agents, "
        f"{size.conversations} conversations, {size.seconds:.0f} s, {findings.checks} checks; "
        f"{sum(reasons.values())} assignments {dict(reasons.most_common())}; "
        f"{len(durations)} router rounds (p50 {_at(durations, 0.5):.2f} s, max {_at(durations, 1):.2f} s, "
        f"late stops {routers['late_stop']}): offered {routers['round.offered']}, "
        f"requeued {routers['round.requeued']}, refused {routers['round.refused']}; "
        f"manual ops {manual_done} done, {sum(refused_by_manual.values())} refused {refused_by_manual}; "
        f"presence changes {presence}; violations {dict(findings.violations) or 0}; longest starved pair "
        f"{findings.longest_starved:.2f} s / {findings.most_rounds_starved} whole rounds"
    )


def _at(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run_and_assert(
    name: str, url: str, size: Size, tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    findings, reasons, children = await exercise(url, size, tmp)
    line = summarise(name, size, findings, reasons, children)
    with capsys.disabled():
        print(f"\n{line}")
    errors = [f"{child.name}: {e}" for child in children for e in (child.result or {}).get("errors", [])]
    assert not errors, "\n".join([line, *errors])
    assert not findings.violations, "\n".join([line, *findings.examples])
    refused = sum(
        v
        for child in children
        for k, v in (child.result or {})["counts"].items()
        if k == "round.refused" or k.startswith("refused.")
    )
    turns_lost = sum((child.result or {})["counts"].get("round.skipped", 0) for child in children)
    assert sum(reasons.values()) >= size.min_assignments, f"too little work to prove anything: {line}"
    # Routers take turns (an advisory lock on PostgreSQL), so the races left are those between a
    # router and the manual processes; routers waiting for their turn show they ran at once.
    assert refused >= size.min_refused, f"too few races to prove anything: {line}"
    if size.routers > 1 and "postgresql" in name:
        assert turns_lost > 0, f"the routers never contended for a turn: {line}"


# -- the tests --------------------------------------------------------------------------------------


@pytest.fixture
async def scratch_postgres(postgres: tuple[PostgresServer | None, str]) -> AsyncIterator[str]:
    server, reason = postgres
    if server is None:
        pytest.skip(f"PostgreSQL: {reason}")
    name = f"hub_concurrency_{os.getpid()}"
    url = await create_database(server.admin_url, name)
    yield url
    await drop_database(server.admin_url, name)


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_eight_routers_and_manual_claims_on_postgresql(
    scratch_postgres: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    size = Size(
        routers=8, manual=2, agents=300, conversations=3000, seconds=40, min_assignments=1500, min_refused=50
    )
    await run_and_assert("postgresql", scratch_postgres, size, tmp_path, capsys)


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_two_routers_and_manual_claims_on_sqlite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    size = Size(
        routers=2, manual=1, agents=60, conversations=400, seconds=10, min_assignments=200, min_refused=5
    )
    await run_and_assert("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}", size, tmp_path, capsys)
