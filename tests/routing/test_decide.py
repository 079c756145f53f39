"""The assignment decision over snapshots with a fixed clock: eligibility, steps, ageing, policies,
capacity, explanations, queue matching, and the fast planner checked against a brute-force one."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from routing.decide import active_step, effective_priority, match_queue, plan, skill_floors, why_not_eligible
from routing.model import (
    DEFAULT_CHANNEL_COSTS,
    UNKNOWN_CHANNEL_COST,
    AgentChoice,
    AgentState,
    ConversationFacts,
    Decision,
    MatchRule,
    Presence,
    QueueSpec,
    Step,
    Waiting,
)
from routing.simulate import synthetic_snapshot

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

# Sticky 0-30 s, experts (>= 4) from 30 s, anyone with the skills from 90 s, overflow after 300 s.
BILLING = QueueSpec(
    "billing",
    required_skills={"billing": 3, "spanish": 3},
    steps=(
        Step(0, last_agent_only=True),
        Step(30, min_proficiency=4),
        Step(90),
        Step(300, overflow_to="general"),
    ),
)
GENERAL = QueueSpec("general")
QUEUES = {"billing": BILLING, "general": GENERAL}
EXPERT = {"billing": 5, "spanish": 4}
SKILLED = {"billing": 3, "spanish": 3}


def agent(
    id: int,
    *,
    presence: Presence = Presence.ONLINE,
    load: int = 0,
    capacity: int = 100,
    skills: Mapping[str, int] | None = None,
    kinds: Iterable[str] = (),
    idle_for: float | None = None,
) -> AgentState:
    """An agent; ``idle_for`` seconds since the last assignment (None: never assigned)."""
    return AgentState(
        id,
        f"agent{id}",
        presence,
        capacity=capacity,
        load=load,
        skills=dict(EXPERT if skills is None else skills),
        channel_kinds=frozenset(kinds),
        last_assigned_at=None if idle_for is None else NOW - timedelta(seconds=idle_for),
    )


def waiting(
    cid: int,
    *,
    queue: str = "billing",
    kind: str = "webchat",
    waited: float = 60.0,
    priority: int = 0,
    last_agent: int | None = None,
    declined: Iterable[int] = (),
) -> Waiting:
    return Waiting(
        cid,
        queue,
        kind,
        NOW - timedelta(seconds=waited),
        priority=priority,
        last_agent_id=last_agent,
        declined_by=frozenset(declined),
    )


def decide_one(
    w: Waiting, agents: Iterable[AgentState], queues: Mapping[str, QueueSpec] = QUEUES
) -> Decision:
    (decision,) = plan(queues, [w], list(agents), NOW)
    return decision


# -- priority and ageing ----------------------------------------------------------------------------


def test_effective_priority_adds_queue_conversation_and_linear_ageing() -> None:
    queue = QueueSpec("q", priority=2, ageing_per_minute=1.5)
    assert effective_priority(queue, waiting(1, waited=0, priority=1), NOW) == 3.0
    assert effective_priority(queue, waiting(1, waited=120, priority=1), NOW) == pytest.approx(6.0)
    # A clock that reads slightly behind the enqueue time never makes ageing negative.
    assert effective_priority(queue, waiting(1, waited=-5), NOW) == 2.0


@pytest.mark.parametrize(
    ("old_waited", "winner"),
    [
        (119.0, 2),  # 1.983 < 2: the fresh high-priority conversation goes first
        (120.0, 1),  # exactly 2 = 2: equal scores, the one waiting longer goes first
        (121.0, 1),  # 2.017 > 2: the old low-priority conversation has aged past it
    ],
)
def test_ageing_lets_a_long_wait_overtake_a_fresh_higher_priority(old_waited: float, winner: int) -> None:
    queues = {"general": GENERAL}  # ageing 1 point per minute
    old = waiting(1, queue="general", waited=old_waited, priority=0)
    fresh = waiting(2, queue="general", waited=0, priority=2)
    only_room_for_one = [agent(7, load=75)]
    decisions = plan(queues, [fresh, old], only_room_for_one, NOW)
    assert decisions[0].conversation_id == winner and decisions[0].agent_id == 7
    assert decisions[1].agent_id is None


# -- steps --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("waited", "has_last_agent", "index"),
    [
        (0, True, 0),
        (29.9, True, 0),
        (30, True, 1),
        (89.9, True, 1),
        (90, True, 2),
        (299, True, 2),
        (300, True, 3),
        (10_000, True, 3),
        (0, False, 1),  # sticky step skipped without a last agent: the next applies at once
        (29, False, 1),
        (95, False, 2),
    ],
)
def test_active_step(waited: float, has_last_agent: bool, index: int) -> None:
    assert active_step(BILLING, waited, has_last_agent) == (index, BILLING.steps[index])


def test_skill_floors_are_raised_never_lowered_by_a_step() -> None:
    queue = QueueSpec("q", required_skills={"billing": 3, "spanish": 5})
    assert skill_floors(queue, Step(30, min_proficiency=4)) == {"billing": 4, "spanish": 5}
    assert skill_floors(queue, Step(30, min_proficiency=1)) == {"billing": 3, "spanish": 5}
    assert skill_floors(queue, Step(30)) == {"billing": 3, "spanish": 5}


LAST, EXPERT_ID, SKILLED_ID = 1, 2, 3


def step_agents(*, last_load: int = 100, expert: Presence = Presence.ONLINE) -> list[AgentState]:
    return [
        agent(LAST, skills=EXPERT, load=last_load),
        agent(EXPERT_ID, skills=EXPERT, presence=expert),
        agent(SKILLED_ID, skills=SKILLED),
    ]


@pytest.mark.parametrize(
    ("waited", "last_agent", "agents", "step", "chosen"),
    [
        (10, LAST, step_agents(last_load=0), 0, LAST),  # sticky: the last agent is free
        (10, LAST, step_agents(), 0, None),  # sticky: the last agent is full, so wait
        (10, None, step_agents(), 1, EXPERT_ID),  # no last agent: experts at once
        (29.999999, LAST, step_agents(), 0, None),
        (30, LAST, step_agents(), 1, EXPERT_ID),  # experts from 30 s, to the microsecond
        (40, LAST, step_agents(), 1, EXPERT_ID),
        (40, LAST, step_agents(expert=Presence.AWAY), 1, None),  # the skilled one is not expert enough
        (100, LAST, step_agents(expert=Presence.AWAY), 2, SKILLED_ID),  # anyone skilled from 90 s
    ],
)
def test_steps_widen_the_search_over_time(
    waited: float, last_agent: int | None, agents: list[AgentState], step: int, chosen: int | None
) -> None:
    d = decide_one(waiting(1, waited=waited, last_agent=last_agent), agents)
    assert (d.step, d.agent_id, d.overflow_to) == (step, chosen, None)


def test_sticky_step_explains_the_busy_last_agent() -> None:
    d = decide_one(waiting(1, waited=10, last_agent=LAST), step_agents())
    assert [(r.agent_id, r.reason) for r in d.rejected] == [(LAST, "no capacity (100+25 > 100)")]
    assert d.rejected_counts == {"not_last_agent": 2, "capacity": 1}
    assert d.candidates == 0


def test_overflow_step_moves_the_conversation_instead_of_choosing() -> None:
    d = decide_one(waiting(1, waited=301, last_agent=LAST), step_agents())
    assert (d.agent_id, d.step, d.overflow_to) == (None, 3, "general")
    assert d.note is not None and "general" in d.note


def test_unknown_queue_is_decided_with_no_agent_and_a_note() -> None:
    d = decide_one(waiting(1, queue="gone"), step_agents())
    assert (d.agent_id, d.queue, d.note) == (None, "gone", "unknown queue 'gone'")


# -- eligibility ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "w", "step", "reason"),
    [
        (agent(1), waiting(9), BILLING.steps[1], None),
        (agent(1, skills={"billing": 3, "spanish": 4}), waiting(9), BILLING.steps[1], "billing 3 < 4"),
        (agent(1, skills={"billing": 3, "spanish": 4}), waiting(9), BILLING.steps[2], None),
        (agent(1, skills={"billing": 5}), waiting(9), BILLING.steps[2], "lacks skill spanish"),
        (agent(1, skills={"billing": 2, "spanish": 5}), waiting(9), BILLING.steps[2], "billing 2 < 3"),
        (agent(1, presence=Presence.AWAY), waiting(9), BILLING.steps[1], "away"),
        (agent(1, presence=Presence.OFFLINE), waiting(9), BILLING.steps[1], "offline"),
        (agent(1, load=80), waiting(9), BILLING.steps[1], "no capacity (80+25 > 100)"),
        (agent(1, load=80), waiting(9, kind="email"), BILLING.steps[1], None),
        (agent(1, kinds=["email"]), waiting(9, kind="sms"), BILLING.steps[1], "does not take sms"),
        (agent(1, kinds=["email", "sms"]), waiting(9, kind="sms"), BILLING.steps[1], None),
        (agent(1), waiting(9, declined=[1]), BILLING.steps[1], "declined this conversation"),
        (agent(1), waiting(9, last_agent=2), BILLING.steps[0], "not the last agent (sticky step)"),
        (agent(2), waiting(9, last_agent=2), BILLING.steps[0], None),
        # Channel and skills (what the agent is) come before presence and load (what they do).
        (agent(1, presence=Presence.OFFLINE, skills={}), waiting(9), BILLING.steps[1], "lacks skill billing"),
    ],
)
def test_why_not_eligible(a: AgentState, w: Waiting, step: Step, reason: str | None) -> None:
    assert why_not_eligible(a, BILLING, step, w) == reason


def test_unknown_channel_kind_costs_the_documented_default() -> None:
    d = decide_one(waiting(1, queue="general", kind="carrier-pigeon"), [agent(1)])
    assert d.cost == UNKNOWN_CHANNEL_COST == 10


def test_presence_channel_and_declined_agents_are_never_chosen() -> None:
    agents = [
        agent(1, presence=Presence.AWAY, idle_for=9000),
        agent(2, presence=Presence.OFFLINE, idle_for=8000),
        agent(3, kinds=["email"], idle_for=7000),
        agent(4, idle_for=6000),
        agent(5, idle_for=10),
    ]
    d = decide_one(waiting(1, waited=40, declined=[4]), agents)
    assert d.agent_id == 5
    assert d.rejected_counts == {"away": 1, "offline": 1, "channel": 1, "declined": 1}
    assert d.candidates == 1


# -- agent choice -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choice", "agents", "chosen"),
    [
        # Longest idle: the oldest last assignment; never assigned counts as oldest.
        (AgentChoice.LONGEST_IDLE, [agent(1, idle_for=60), agent(2, idle_for=600), agent(3, idle_for=5)], 2),
        (AgentChoice.LONGEST_IDLE, [agent(1, idle_for=60), agent(2, idle_for=None)], 2),
        # ... ties by lower load share, then by id.
        (AgentChoice.LONGEST_IDLE, [agent(1, idle_for=60, load=50), agent(2, idle_for=60, load=10)], 2),
        (AgentChoice.LONGEST_IDLE, [agent(2, idle_for=60), agent(1, idle_for=60)], 1),
        # Least occupied: the lowest share of capacity in use (not raw load).
        (AgentChoice.LEAST_OCCUPIED, [agent(1, load=50), agent(2, load=20)], 2),
        (AgentChoice.LEAST_OCCUPIED, [agent(1, load=50, capacity=200), agent(2, load=30)], 1),
        # ... ties by longest idle, then id.
        (AgentChoice.LEAST_OCCUPIED, [agent(1, load=20, idle_for=5), agent(2, load=20, idle_for=50)], 2),
        (AgentChoice.LEAST_OCCUPIED, [agent(2, load=20), agent(1, load=20)], 1),
        # Best proficiency: highest total in the queue's skills, then least occupied, then id.
        (AgentChoice.BEST_PROFICIENCY, [agent(1, skills={"billing": 4, "spanish": 4}), agent(2)], 2),
        (
            AgentChoice.BEST_PROFICIENCY,
            [agent(1, skills={"billing": 5, "spanish": 4, "german": 5}), agent(2, skills=EXPERT)],
            1,
        ),
        (AgentChoice.BEST_PROFICIENCY, [agent(1, load=50), agent(2, load=25)], 2),
        (AgentChoice.BEST_PROFICIENCY, [agent(2), agent(1)], 1),
    ],
)
def test_agent_choice(choice: AgentChoice, agents: list[AgentState], chosen: int) -> None:
    queues = {"billing": replace(BILLING, choice=choice)}
    assert decide_one(waiting(1, waited=100), agents, queues).agent_id == chosen


def test_longest_idle_rotates_within_one_plan() -> None:
    agents = [agent(1, idle_for=300, load=50), agent(2, idle_for=200), agent(3, idle_for=100)]
    conversations = [waiting(i, queue="general", waited=60 - i) for i in range(1, 6)]
    assigned = [d.agent_id for d in plan({"general": GENERAL}, conversations, agents, NOW)]
    # Each pick becomes the most recently assigned; ties at "now" go to the lower load share.
    assert assigned == [1, 2, 3, 2, 3]


# -- capacity -------------------------------------------------------------------------------------


def test_an_agent_on_a_call_takes_no_chat() -> None:
    d = decide_one(waiting(1, queue="general"), [agent(1, load=100)])
    assert d.agent_id is None
    assert [r.reason for r in d.rejected] == ["no capacity (100+25 > 100)"]


def test_three_chats_and_an_email_fit_one_agent_and_no_more() -> None:
    kinds = ["webchat", "webchat", "webchat", "email", "webchat", "email"]
    conversations = [
        waiting(i, queue="general", kind=k, waited=100 - i) for i, k in enumerate(kinds, start=1)
    ]
    decisions = plan({"general": GENERAL}, conversations, [agent(1)], NOW)
    assert [d.agent_id for d in decisions] == [1, 1, 1, 1, None, 1]
    assert [d.cost for d in decisions] == [25, 25, 25, 10, 25, 10]
    assert decisions[4].rejected[0].reason == "no capacity (85+25 > 100)"


def test_one_plan_never_over_commits_an_agent() -> None:
    agents = [agent(i, load=load) for i, load in enumerate([0, 40, 75, 90, 100], start=1)]
    conversations = [
        waiting(i, queue="general", kind=kind, waited=i)
        for i, kind in enumerate(["voice", "webchat", "sms", "email"] * 10, start=1)
    ]
    decisions = plan({"general": GENERAL}, conversations, agents, NOW)
    taken = {a.id: a.load for a in agents}
    for d in decisions:
        if d.agent_id is not None:
            taken[d.agent_id] += d.cost
    assert all(taken[a.id] <= a.capacity for a in agents)
    assert len({d.conversation_id for d in decisions}) == len(conversations)


# -- explanations -------------------------------------------------------------------------------------


def test_explain_names_the_most_telling_rejections_and_counts_every_agent() -> None:
    agents = [
        agent(1, skills={"billing": 5}),  # lacks spanish
        agent(2, kinds=["email"]),  # does not take webchat
        agent(3, presence=Presence.AWAY),
        agent(4, load=90),
        agent(5, skills={"billing": 3, "spanish": 3}),  # below the experts' floor of step 1
        agent(6, idle_for=30),
        agent(7, idle_for=3000),
    ]
    d = decide_one(waiting(1, waited=40, declined=[7]), agents)
    assert d.agent_id == 6
    payload = d.explain()
    assert payload["agent_id"] == 6 and payload["step"] == 1 and payload["cost"] == 25
    assert payload["rejected"] == [
        {"agent_id": 4, "reason": "no capacity (90+25 > 100)"},
        {"agent_id": 3, "reason": "away"},
        {"agent_id": 7, "reason": "declined this conversation"},
        {"agent_id": 1, "reason": "lacks skill spanish"},
        {"agent_id": 5, "reason": "billing 3 < 4"},
        {"agent_id": 2, "reason": "does not take webchat"},
    ]
    assert payload["rejected_counts"] == {"channel": 1, "skill": 2, "away": 1, "declined": 1, "capacity": 1}
    assert payload["candidates"] == 1
    assert sum(payload["rejected_counts"].values()) + payload["candidates"] == len(agents)
    for key in ("queue", "score", "overflow_to", "note"):
        assert key in payload


def test_explain_limit_caps_the_list_but_not_the_counts() -> None:
    agents = [agent(i, load=100) for i in range(1, 31)]
    (d,) = plan(QUEUES, [waiting(1, waited=40)], agents, NOW, explain_limit=4)
    assert len(d.rejected) == 4 and d.rejected_counts == {"capacity": 30}
    (quiet,) = plan(QUEUES, [waiting(1, waited=40)], agents, NOW, explain_limit=0)
    assert quiet.rejected == () and quiet.rejected_counts == {"capacity": 30}


# -- queue matching -----------------------------------------------------------------------------------


def facts(**overrides: Any) -> ConversationFacts:
    values: dict[str, Any] = {
        "channel_kind": "email",
        "channel": "support-mail",
        "language": "es-MX",
        "contact_attributes": {"tier": "gold", "country": "MX"},
        "first_text": "Hola, tengo un problema con mi Factura de marzo.",
    }
    values.update(overrides)
    return ConversationFacts(**values)


@pytest.mark.parametrize(
    ("rule", "f", "matches"),
    [
        (MatchRule(), facts(), True),
        (MatchRule(channel_kinds=frozenset({"email", "webchat"})), facts(), True),
        (MatchRule(channel_kinds=frozenset({"sms"})), facts(), False),
        (MatchRule(channels=frozenset({"support-mail"})), facts(), True),
        (MatchRule(channels=frozenset({"sales-mail"})), facts(), False),
        (MatchRule(languages=frozenset({"es"})), facts(), True),  # primary subtag
        (MatchRule(languages=frozenset({"ES-es"})), facts(), True),  # case-insensitive, subtag only
        (MatchRule(languages=frozenset({"en"})), facts(), False),
        (MatchRule(languages=frozenset({"es"})), facts(language=None), False),
        (MatchRule(contact_attributes={"tier": "gold"}), facts(), True),
        (MatchRule(contact_attributes={"tier": "gold", "country": "MX"}), facts(), True),
        (MatchRule(contact_attributes={"tier": "silver"}), facts(), False),
        (MatchRule(contact_attributes={"vip": True}), facts(), False),  # missing attribute
        (MatchRule(keywords=frozenset({"factura"})), facts(), True),  # case-insensitive
        (MatchRule(keywords=frozenset({"fact"})), facts(), False),  # whole words only
        (MatchRule(keywords=frozenset({"refund", "marzo"})), facts(), True),  # any of them
        (MatchRule(keywords=frozenset({"mi factura"})), facts(first_text="sobre mi\n factura"), True),
        (MatchRule(keywords=frozenset({"c++"})), facts(first_text="help with C++ please"), True),
        (MatchRule(channel_kinds=frozenset({"email"}), languages=frozenset({"en"})), facts(), False),
    ],
)
def test_match_rules(rule: MatchRule, f: ConversationFacts, matches: bool) -> None:
    assert (match_queue([QueueSpec("q", match=rule)], f) is not None) is matches


def test_match_queue_takes_the_first_match_in_order() -> None:
    vip = QueueSpec("vip", match=MatchRule(contact_attributes={"tier": "gold"}))
    billing = QueueSpec("billing", match=MatchRule(keywords=frozenset({"invoice"})))
    general = QueueSpec("general")
    assert match_queue([vip, billing, general], facts()) is vip
    assert match_queue([billing, vip, general], facts(first_text="my invoice")) is billing
    assert match_queue([billing, general], facts()) is general
    assert match_queue([billing], facts()) is None


# -- the fast planner against a brute-force one ------------------------------------------------------

KIND_OF_REASON = [
    (re.compile(r"not the last agent"), "not_last_agent"),
    (re.compile(r"does not take "), "channel"),
    (re.compile(r"^(lacks skill \S+|\S+ \d < \d)$"), "skill"),
    (re.compile(r"^offline$"), "offline"),
    (re.compile(r"^away$"), "away"),
    (re.compile(r"^declined this conversation$"), "declined"),
    (re.compile(r"^no capacity \(\d+\+\d+ > \d+\)$"), "capacity"),
]


def reason_kind(reason: str) -> str:
    return next(kind for pattern, kind in KIND_OF_REASON if pattern.search(reason))


def preference(choice: AgentChoice, a: AgentState, queue: QueueSpec) -> tuple[float, ...]:
    last = -float("inf") if a.last_assigned_at is None else a.last_assigned_at.timestamp()
    share = a.load / a.capacity
    if choice is AgentChoice.LONGEST_IDLE:
        return (last, share, a.id)
    if choice is AgentChoice.LEAST_OCCUPIED:
        return (share, last, a.id)
    return (-sum(a.skills.get(s, 0) for s in queue.required_skills), share, a.id)


def test_plan_agrees_with_brute_force_on_a_random_snapshot() -> None:
    queues, conversations, agents, now = synthetic_snapshot(
        agents=120, waiting=600, queues=12, skills=6, seed=7
    )
    decisions = plan(queues, conversations, agents, now, explain_limit=50)
    assert len(decisions) == len(conversations)
    by_id = {w.conversation_id: w for w in conversations}
    state = {a.id: a for a in agents}
    keys = [
        (-effective_priority(queues[w.queue], w, now), w.enqueued_at, w.conversation_id)
        for w in (by_id[d.conversation_id] for d in decisions)
    ]
    assert keys == sorted(keys)
    assigned = 0
    for d in decisions:
        w = by_id[d.conversation_id]
        queue = queues[w.queue]
        index, step = active_step(queue, (now - w.enqueued_at).total_seconds(), w.last_agent_id is not None)
        assert d.step == index
        if step.overflow_to is not None:
            assert d.overflow_to == step.overflow_to and d.agent_id is None
            continue
        reasons = {a.id: why_not_eligible(a, queue, step, w, DEFAULT_CHANNEL_COSTS) for a in state.values()}
        eligible = [a for a in state.values() if reasons[a.id] is None]
        counts: dict[str, int] = {}
        for reason in reasons.values():
            if reason is not None:
                counts[reason_kind(reason)] = counts.get(reason_kind(reason), 0) + 1
        assert d.rejected_counts == counts, d
        assert d.candidates == len(eligible)
        for r in d.rejected:
            assert reasons[r.agent_id] == r.reason
        best = min(eligible, key=lambda a: preference(queue.choice, a, queue), default=None)
        assert d.agent_id == (best.id if best else None), d
        if best is not None:
            assigned += 1
            state[best.id] = replace(best, load=best.load + d.cost, last_assigned_at=now)
    assert assigned > 100  # the snapshot exercises real choices, not only rejections
