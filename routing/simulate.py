"""Simulate the router before it meets customers: ``python -m routing.simulate --help``.

An Erlang-A discrete-event model (Poisson arrivals, exponential service times per channel kind,
exponential customer patience; a conversation not assigned within its patience is abandoned), run
against the real ``routing.decide.plan``. One trace of arrivals, service times and patience is drawn
from ``--seed`` and replayed under each agent-choice policy, so the policies differ only in how a
queue picks among eligible agents. The planner is called whenever something changes: an arrival, a
completion, a step boundary or an abandonment.

Simplifications, stated so the figures are read right: every agent is online for the whole run;
offers (mode = "offer") are accepted at once; a conversation moved by an overflow step re-enters
the target queue as a new entry (its steps and ageing restart) but its wait and service level are
measured from its first arrival, against its first queue's SLA.

``synthetic_snapshot`` builds the large snapshot used to time ``plan`` (``--time-plan``).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from routing.config import load_routing
from routing.decide import channel_cost, plan
from routing.model import (
    DEFAULT_CAPACITY,
    DEFAULT_CHANNEL_COSTS,
    AgentChoice,
    AgentState,
    Presence,
    QueueSpec,
    Step,
    Waiting,
)

START = datetime(2024, 1, 1, 8, 0, tzinfo=UTC)
# Mean handling time per channel kind, minutes.
DEFAULT_SERVICE_MINUTES: Mapping[str, float] = {"webchat": 6, "email": 4, "sms": 5, "voice": 5, "xmpp": 6}
# Share of arrivals per channel kind when a queue takes every kind.
CHANNEL_MIX: Mapping[str, float] = {"webchat": 0.4, "email": 0.3, "sms": 0.15, "voice": 0.1, "xmpp": 0.05}
QUEUE_NAMES = ("support", "billing", "sales", "technical", "returns", "accounts", "shipping", "warranty")
RULE = (
    "service level = assigned within the queue's SLA / (assigned + abandoned); "
    "every abandonment counts as a miss"
)


@dataclass(frozen=True, slots=True)
class Arrival:
    """One customer conversation of the trace: everything random about it is drawn once."""

    id: int
    at: float  # seconds from the start
    queue: str
    channel_kind: str
    priority: int
    contact: int  # repeat contacts make sticky steps matter
    service_seconds: float
    patience_seconds: float


@dataclass(frozen=True, slots=True)
class Trace:
    queues: tuple[QueueSpec, ...]
    agents: tuple[AgentState, ...]
    arrivals: tuple[Arrival, ...]
    costs: Mapping[str, int]
    hours: float


@dataclass(frozen=True, slots=True)
class PolicyResult:
    policy: str
    arrivals: int
    assignments: int
    abandoned: int
    within_sla: int
    service_level: float
    asa_s: float
    abandon_rate: float
    max_wait_s: float
    fairness: float
    plans: int  # calls to routing.decide.plan

    def as_json(self) -> dict[str, Any]:
        return {
            "sim": "routing",
            "policy": self.policy,
            "service_level": round(self.service_level, 4),
            "asa_s": round(self.asa_s, 2),
            "abandoned": self.abandoned,
            "abandon_rate": round(self.abandon_rate, 4),
            "max_wait_s": round(self.max_wait_s, 1),
            "fairness": round(self.fairness, 4),
            "assignments": self.assignments,
            "arrivals": self.arrivals,
            "plans": self.plans,
        }


# -- the trace ---------------------------------------------------------------------------------


def generated_queues(count: int, rng: random.Random) -> list[QueueSpec]:
    """``count`` queues: skilled ones (a skill of their own, sometimes a language) with a sticky
    first step, experts from 20 s and anyone skilled from 60 s; the last is a skill-less catch-all."""
    queues: list[QueueSpec] = []
    for i in range(max(0, count - 1)):
        name = QUEUE_NAMES[i] if i < len(QUEUE_NAMES) else f"queue{i + 1}"
        skills = {name: rng.randint(2, 3)}
        if rng.random() < 0.3:
            skills["spanish"] = 3
        steps = (Step(0, last_agent_only=True), Step(20, min_proficiency=4), Step(60))
        queues.append(QueueSpec(name, required_skills=skills, priority=rng.randint(0, 2), steps=steps))
    if count >= 1:
        queues.append(QueueSpec("general"))
    return queues


def generated_agents(
    count: int, queues: Sequence[QueueSpec], capacity: int, rng: random.Random
) -> list[AgentState]:
    """Agents with one to three home queues whose skills they hold at or above the floor, a few
    unrelated skills, and a quarter of them not taking voice."""
    skilled = [q for q in queues if q.required_skills]
    agents: list[AgentState] = []
    for i in range(1, count + 1):
        skills: dict[str, int] = {}
        for q in rng.sample(skilled, min(len(skilled), rng.randint(1, 3))):
            for skill, floor in q.required_skills.items():
                skills[skill] = max(skills.get(skill, 0), rng.randint(floor, 5))
        for extra in rng.sample(("french", "german", "retention", "tax"), rng.randint(0, 2)):
            skills.setdefault(extra, rng.randint(1, 5))
        kinds = frozenset(k for k in CHANNEL_MIX if k != "voice") if rng.random() < 0.25 else frozenset()
        agents.append(
            AgentState(i, f"agent{i}", Presence.ONLINE, capacity=capacity, skills=skills, channel_kinds=kinds)
        )
    return agents


def _kinds_for(queue: QueueSpec) -> tuple[list[str], list[float]]:
    kinds = sorted(queue.match.channel_kinds) if queue.match.channel_kinds else list(CHANNEL_MIX)
    return kinds, [CHANNEL_MIX.get(k, 0.1) for k in kinds]


def make_trace(
    *,
    seed: int,
    hours: float,
    agents: int,
    queues: int | Sequence[QueueSpec],
    arrivals_per_hour: float,
    patience_seconds: float,
    service_minutes: Mapping[str, float] = DEFAULT_SERVICE_MINUTES,
    costs: Mapping[str, int] = DEFAULT_CHANNEL_COSTS,
    capacity: int = DEFAULT_CAPACITY,
) -> Trace:
    """Draw one trace from ``seed``: queues (or the given ones), agents, and Poisson arrivals spread
    evenly over the queues, each with its service time and patience."""
    rng = random.Random(seed)
    specs = generated_queues(queues, rng) if isinstance(queues, int) else list(queues)
    people = generated_agents(agents, specs, capacity, rng)
    arrivals: list[Arrival] = []
    horizon = hours * 3600.0
    rate = arrivals_per_hour / 3600.0 / max(1, len(specs))
    contacts = max(1, int(arrivals_per_hour * hours / 3))  # about three conversations per contact
    for queue in specs:
        kinds, weights = _kinds_for(queue)
        t = rng.expovariate(rate) if rate > 0 else math.inf
        while t < horizon:
            kind = rng.choices(kinds, weights)[0]
            mean_service = 60.0 * service_minutes.get(kind, 5.0)
            priority = rng.choice((1, 2)) if rng.random() < 0.1 else 0
            # Times are whole microseconds, as datetimes are: a step boundary at arrival + 20 s
            # then reads exactly 20 s waited, not 19.999999.
            arrivals.append(
                Arrival(
                    id=0,
                    at=round(t, 6),
                    queue=queue.name,
                    channel_kind=kind,
                    priority=priority,
                    contact=rng.randrange(contacts),
                    service_seconds=round(rng.expovariate(1.0 / mean_service), 6),
                    patience_seconds=round(rng.expovariate(1.0 / patience_seconds), 6)
                    if patience_seconds > 0
                    else 0.0,
                )
            )
            t += rng.expovariate(rate)
    arrivals.sort(key=lambda a: (a.at, a.queue))
    numbered = tuple(replace(a, id=i) for i, a in enumerate(arrivals, start=1))
    return Trace(tuple(specs), tuple(people), numbered, dict(costs), hours)


# -- one replay --------------------------------------------------------------------------------

_COMPLETE, _ARRIVE, _WAKE, _ABANDON = range(4)  # same-instant order: room is freed first


def jain_fairness(values: Sequence[float]) -> float:
    """Jain's index (sum x)^2 / (n * sum x^2): 1 when all are equal, 1/n when one does everything."""
    square_sum = sum(x * x for x in values)
    if not values or square_sum == 0:
        return 1.0
    return sum(values) ** 2 / (len(values) * square_sum)


def run_policy(
    trace: Trace,
    policy: AgentChoice,
    progress: Callable[[float], None] | None = None,
) -> PolicyResult:
    """Replay ``trace`` with every queue's choice set to ``policy`` and measure the outcome."""
    queues = {q.name: replace(q, choice=policy) for q in trace.queues}
    first_queue = {q.name: q for q in trace.queues}
    agents = {a.id: a for a in trace.agents}
    load = dict.fromkeys(agents, 0)
    last_assigned: dict[int, datetime | None] = dict.fromkeys(agents)
    busy = dict.fromkeys(agents, 0.0)  # capacity-seconds served, for fairness
    last_agent_of_contact: dict[int, int] = {}
    waiting: dict[int, tuple[Waiting, Arrival]] = {}
    events: list[tuple[float, int, int, int, int]] = []  # (time, order, seq, a, b)
    seq = 0

    def push(at: float, kind: int, a: int = 0, b: int = 0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (at, kind, seq, a, b))

    def enqueue(arrival: Arrival, queue: QueueSpec, at: float) -> None:
        contact_agent = last_agent_of_contact.get(arrival.contact)
        w = Waiting(
            arrival.id,
            queue.name,
            arrival.channel_kind,
            START + timedelta(seconds=at),
            arrival.priority,
            contact_agent,
        )
        waiting[arrival.id] = (w, arrival)
        for step in queue.steps:
            if step.after_seconds > 0:
                push(at + step.after_seconds, _WAKE, arrival.id)

    for arrival in trace.arrivals:
        push(arrival.at, _ARRIVE, arrival.id)
    by_id = {a.id: a for a in trace.arrivals}
    waits: list[float] = []
    within = abandoned = plans = 0
    max_wait = 0.0
    horizon = trace.hours * 3600.0

    while events:
        now = events[0][0]
        changed = False
        while events and events[0][0] == now:
            _, kind, _, a, b = heapq.heappop(events)
            if kind == _COMPLETE:
                load[a] -= b
                changed = True
            elif kind == _ARRIVE:
                arrival = by_id[a]
                enqueue(arrival, queues[arrival.queue], now)
                push(now + arrival.patience_seconds, _ABANDON, a)
                changed = True
            elif a in waiting:  # a step boundary or the end of patience of one still waiting
                if kind == _ABANDON:
                    del waiting[a]
                    abandoned += 1
                    max_wait = max(max_wait, now - by_id[a].at)
                changed = True
        if not changed or not waiting:
            continue
        if progress is not None:
            progress(min(now, horizon) / horizon if horizon else 1.0)
        clock = START + timedelta(seconds=now)
        for _round in range(10):  # overflow moves re-plan at once; config forbids loops of zero length
            states = [replace(agents[i], load=load[i], last_assigned_at=last_assigned[i]) for i in agents]
            decisions = plan(
                queues, [w for w, _ in waiting.values()], states, clock, trace.costs, explain_limit=0
            )
            plans += 1
            moved = False
            for d in decisions:
                if d.agent_id is not None:
                    _, arrival = waiting.pop(d.conversation_id)
                    wait = now - arrival.at
                    waits.append(wait)
                    max_wait = max(max_wait, wait)
                    within += wait <= first_queue[arrival.queue].sla_seconds
                    load[d.agent_id] += d.cost
                    last_assigned[d.agent_id] = clock
                    busy[d.agent_id] += d.cost * arrival.service_seconds
                    last_agent_of_contact[arrival.contact] = d.agent_id
                    push(now + arrival.service_seconds, _COMPLETE, d.agent_id, d.cost)
                elif d.overflow_to is not None and d.overflow_to in queues:
                    _, arrival = waiting.pop(d.conversation_id)
                    enqueue(arrival, queues[d.overflow_to], now)
                    moved = True
            if not moved:
                break

    assigned = len(waits)
    total = len(trace.arrivals)
    return PolicyResult(
        policy=policy.value,
        arrivals=total,
        assignments=assigned,
        abandoned=abandoned,
        within_sla=within,
        service_level=within / (assigned + abandoned) if assigned + abandoned else 1.0,
        asa_s=sum(waits) / assigned if assigned else 0.0,
        abandon_rate=abandoned / total if total else 0.0,
        max_wait_s=max_wait,
        fairness=jain_fairness(list(busy.values())),
        plans=plans,
    )


# -- a large snapshot for timing plan() ------------------------------------------------------------

KINDS = tuple(CHANNEL_MIX)


def synthetic_snapshot(
    *, agents: int = 2000, waiting: int = 10000, queues: int = 200, skills: int = 50, seed: int = 1
) -> tuple[dict[str, QueueSpec], list[Waiting], list[AgentState], datetime]:
    """A demanding snapshot: skilled queues with four steps (sticky, experts, anyone skilled,
    overflow), a catch-all, agents with 3-10 of the skills, a fifth of them taking only three channel
    kinds, 80 % online, loads and idle times spread, waits of 0-400 s, some declined offers."""
    rng = random.Random(seed)
    now = START
    skill_names = [f"skill{i}" for i in range(skills)]
    specs: dict[str, QueueSpec] = {}
    for i in range(queues - 1):
        required = {s: rng.randint(1, 3) for s in rng.sample(skill_names, rng.randint(1, 2))}
        steps = (
            Step(0, last_agent_only=True),
            Step(30, min_proficiency=4),
            Step(90),
            Step(300, overflow_to="general"),
        )
        specs[f"q{i}"] = QueueSpec(
            f"q{i}",
            required_skills=required,
            priority=rng.randint(0, 3),
            steps=steps,
            choice=rng.choice(list(AgentChoice)),
        )
    specs["general"] = QueueSpec("general")
    names = list(specs)
    people: list[AgentState] = []
    for i in range(1, agents + 1):
        r = rng.random()
        presence = Presence.ONLINE if r < 0.8 else Presence.AWAY if r < 0.9 else Presence.OFFLINE
        people.append(
            AgentState(
                i,
                f"agent{i}",
                presence,
                load=rng.choice((0, 0, 10, 20, 25, 50)),
                skills={
                    s: rng.randint(1, 5) for s in rng.sample(skill_names, min(skills, rng.randint(3, 10)))
                },
                channel_kinds=frozenset(rng.sample(KINDS, 3)) if rng.random() < 0.2 else frozenset(),
                last_assigned_at=None
                if rng.random() < 0.1
                else now - timedelta(seconds=rng.uniform(0, 3600)),
            )
        )
    conversations = [
        Waiting(
            i,
            rng.choice(names),
            rng.choice(KINDS),
            now - timedelta(seconds=rng.uniform(0, 400)),
            priority=rng.randint(0, 4),
            last_agent_id=rng.randint(1, agents) if rng.random() < 0.3 else None,
            declined_by=frozenset(rng.sample(range(1, agents + 1), 2))
            if rng.random() < 0.05
            else frozenset(),
        )
        for i in range(1, waiting + 1)
    ]
    return specs, conversations, people, now


def time_plan(repeat: int = 5, **sizes: int) -> dict[str, Any]:
    """Best and median wall time of ``plan`` over the synthetic snapshot."""
    queues, waiting, agents, now = synthetic_snapshot(**sizes)
    times = []
    decisions = []
    for _ in range(repeat):
        started = time.perf_counter()
        decisions = plan(queues, waiting, agents, now)
        times.append(time.perf_counter() - started)
    times.sort()
    return {
        "sim": "plan",
        "agents": len(agents),
        "waiting": len(waiting),
        "queues": len(queues),
        "skills": sizes.get("skills", 50),
        "best_ms": round(times[0] * 1000, 1),
        "median_ms": round(times[len(times) // 2] * 1000, 1),
        "assigned": sum(d.agent_id is not None for d in decisions),
        "overflowed": sum(d.overflow_to is not None for d in decisions),
    }


# -- command line ------------------------------------------------------------------------------


def _service(text: str) -> tuple[str, float]:
    kind, _, minutes = text.partition("=")
    try:
        value = float(minutes)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KIND=MINUTES, e.g. webchat=6, got {text!r}") from None
    if not kind or value <= 0:
        raise argparse.ArgumentTypeError(f"expected KIND=MINUTES with minutes > 0, got {text!r}")
    return kind, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m routing.simulate",
        description=(
            "Erlang-A simulation of the router: one random trace of arrivals (Poisson per queue), "
            "service times (exponential per channel kind) and customer patience (exponential; a "
            "conversation not assigned in time is abandoned), replayed under each agent-choice "
            "policy with the real planner. " + RULE + "."
        ),
        epilog="Default service means (minutes): "
        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_SERVICE_MINUTES.items())
        + ". Agents are online throughout; offers are accepted at once.",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed of the trace (default 1)")
    parser.add_argument("--hours", type=float, default=8.0, help="hours of arrivals (default 8)")
    parser.add_argument("--agents", type=int, default=20, help="number of agents (default 20)")
    parser.add_argument(
        "--queues", type=int, default=4, help="generated queues, the last a catch-all (default 4)"
    )
    parser.add_argument(
        "--arrivals-per-hour",
        type=float,
        default=400.0,
        help="all queues together, split evenly (default 400)",
    )
    parser.add_argument(
        "--patience-seconds", type=float, default=300.0, help="mean customer patience (default 300)"
    )
    parser.add_argument(
        "--service",
        type=_service,
        action="append",
        default=[],
        metavar="KIND=MINUTES",
        help="mean service time of a channel kind, repeatable (e.g. --service voice=8)",
    )
    parser.add_argument(
        "--routing",
        type=Path,
        metavar="FILE",
        help="take queues, costs and capacity from a routing TOML file",
    )
    parser.add_argument(
        "--policy",
        choices=[c.value for c in AgentChoice],
        action="append",
        help="run only this policy (repeatable; default all three)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON line per policy instead of a table")
    parser.add_argument(
        "--time-plan",
        action="store_true",
        help="instead: time plan() on a synthetic 2000 agents / 10000 waiting / 200 queues / 50 skills",
    )
    return parser


class _Progress:
    """Reports on stderr only once a run has taken more than two seconds, then every second."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = self.shown = time.monotonic()

    def __call__(self, share: float) -> None:
        now = time.monotonic()
        if now - self.started > 2 and now - self.shown >= 1:
            self.shown = now
            print(f"simulate: {self.label} {share:.0%}", file=sys.stderr, flush=True)


def _table(results: Sequence[PolicyResult], trace: Trace, seed: int) -> str:
    lines = [
        f"{len(trace.arrivals)} arrivals over {trace.hours:g} h, {len(trace.agents)} agents, "
        f"{len(trace.queues)} queues, seed {seed}",
        RULE,
        "",
        f"{'policy':<18}{'service level':>14}{'ASA s':>9}{'abandoned':>11}{'abandon %':>11}"
        f"{'max wait s':>12}{'fairness':>10}{'assignments':>13}",
    ]
    for r in results:
        lines.append(
            f"{r.policy:<18}{r.service_level:>14.3f}{r.asa_s:>9.1f}{r.abandoned:>11}{r.abandon_rate:>11.1%}"
            f"{r.max_wait_s:>12.0f}{r.fairness:>10.3f}{r.assignments:>13}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulation (or --time-plan) and print a table or JSON lines; 2 on a bad routing file."""
    args = _parser().parse_args(argv)
    if args.time_plan:
        print(json.dumps(time_plan()))
        return 0
    for name in ("hours", "arrivals_per_hour", "patience_seconds"):
        if getattr(args, name) < 0:
            _parser().error(f"--{name.replace('_', '-')} must be >= 0")
    if args.agents < 1 or args.queues < 1:
        _parser().error("--agents and --queues must be at least 1")
    queues: int | list[QueueSpec] = args.queues
    costs: Mapping[str, int] = DEFAULT_CHANNEL_COSTS
    capacity = DEFAULT_CAPACITY
    if args.routing is not None:
        try:
            settings, queues = load_routing(args.routing)
        except ValueError as exc:
            print(f"simulate: {exc}", file=sys.stderr)
            return 2
        costs, capacity = settings.costs, settings.default_capacity
    service = {**DEFAULT_SERVICE_MINUTES, **dict(args.service)}
    trace = make_trace(
        seed=args.seed,
        hours=args.hours,
        agents=args.agents,
        queues=queues,
        arrivals_per_hour=args.arrivals_per_hour,
        patience_seconds=args.patience_seconds,
        service_minutes=service,
        costs=costs,
        capacity=capacity,
    )
    too_big = sorted(
        {a.channel_kind for a in trace.arrivals if channel_cost(a.channel_kind, costs) > capacity}
    )
    if too_big:
        print(
            f"simulate: warning: no agent can ever take {', '.join(too_big)} (cost > capacity)",
            file=sys.stderr,
        )
    policies = [AgentChoice(p) for p in args.policy] if args.policy else list(AgentChoice)
    results = []
    for policy in policies:
        result = run_policy(trace, policy, _Progress(policy.value))
        results.append(result)
        if args.json:
            print(json.dumps({**result.as_json(), "seed": args.seed}), flush=True)
    if not args.json:
        print(_table(results, trace, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
