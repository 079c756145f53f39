"""The assignment decision: pure functions over a snapshot of queues, waiting conversations and agents.

Nothing here reads a clock or a database: ``now`` is an argument, so the live router, the simulator
(``routing.simulate``) and tests with a controllable clock run the same code. ``plan`` only proposes;
the claim (``routing.claim``) makes a proposal real or refuses it when the snapshot was stale.

Eligibility, checked in this order; the first failure is the agent's reason, and its kind is what
``Decision.rejected_counts`` counts:

====================  ===============================================  ==========================
kind                  reason (example)                                 when
====================  ===============================================  ==========================
``not_last_agent``    "not the last agent (sticky step)"               sticky step, anyone else
``channel``           "does not take sms"                              agent's channel kinds
``skill``             "lacks skill spanish", "billing 2 < 4"           below a skill floor
``offline``/``away``  "offline", "away"                                only ONLINE agents take work
``declined``          "declined this conversation"                     in ``Waiting.declined_by``
``capacity``          "no capacity (80+25 > 100)"                      load + cost > capacity
====================  ===============================================  ==========================

What an agent *is* (channels, skills) comes before what they are *doing* (presence, load), so the
counts answer "is anyone qualified at all?" before "are the qualified ones busy?".
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from functools import lru_cache

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
    Rejection,
    Step,
    Waiting,
)

NOT_LAST_AGENT = "not_last_agent"
CHANNEL = "channel"
SKILL = "skill"
OFFLINE = "offline"
AWAY = "away"
DECLINED = "declined"
CAPACITY = "capacity"


def channel_cost(kind: str, costs: Mapping[str, int] = DEFAULT_CHANNEL_COSTS) -> int:
    """Capacity units a conversation of ``kind`` takes; kinds missing from ``costs`` take
    ``UNKNOWN_CHANNEL_COST`` (10, an email's weight) so a new kind never blocks agents outright."""
    return costs.get(kind, UNKNOWN_CHANNEL_COST)


def effective_priority(queue: QueueSpec, w: Waiting, now: datetime) -> float:
    """Queue priority + the conversation's own + linear ageing, so low priority never starves:
    a conversation gains ``queue.ageing_per_minute`` points for every minute it has waited."""
    return _score(queue, w.priority, (now - w.enqueued_at).total_seconds())


def _score(queue: QueueSpec, priority: int, waited_seconds: float) -> float:
    return queue.priority + priority + queue.ageing_per_minute * max(0.0, waited_seconds / 60.0)


def active_step(queue: QueueSpec, waited_seconds: float, has_last_agent: bool) -> tuple[int, Step]:
    """The last step whose ``after_seconds`` has passed (steps are sorted; ``routing.config`` checks).

    A ``last_agent_only`` step is skipped when the conversation has no last agent: the next step then
    applies at once, whatever its ``after_seconds``, because waiting for nobody helps no one. When the
    last agent exists but is busy, away or offline, the sticky step holds until the next one starts.
    """
    steps = queue.steps or (Step(),)
    index = 0
    for i, step in enumerate(steps):
        if step.after_seconds > waited_seconds:
            break
        index = i
    if not has_last_agent:
        while steps[index].last_agent_only and index + 1 < len(steps):
            index += 1
    return index, steps[index]


def skill_floors(queue: QueueSpec, step: Step) -> dict[str, int]:
    """Minimum proficiency per required skill during ``step``: the step's ``min_proficiency`` raises
    every floor (max of the two) and never lowers one; without it the queue's own minimums hold."""
    if step.min_proficiency is None:
        return dict(queue.required_skills)
    return {skill: max(level, step.min_proficiency) for skill, level in queue.required_skills.items()}


def _skill_shortfall(skills: Mapping[str, int], floors: Mapping[str, int]) -> str | None:
    for skill in sorted(floors):
        have = skills.get(skill)
        if have is None:
            return f"lacks skill {skill}"
        if have < floors[skill]:
            return f"{skill} {have} < {floors[skill]}"
    return None


def _reason(
    agent: AgentState,
    floors: Mapping[str, int],
    sticky_to: int | None,
    w: Waiting,
    cost: int,
    load: int,
) -> tuple[str, str] | None:
    """(kind, human reason) for the first check ``agent`` fails, or None when eligible."""
    if sticky_to is not None and agent.id != sticky_to:
        return NOT_LAST_AGENT, "not the last agent (sticky step)"
    if agent.channel_kinds and w.channel_kind not in agent.channel_kinds:
        return CHANNEL, f"does not take {w.channel_kind}"
    shortfall = _skill_shortfall(agent.skills, floors)
    if shortfall is not None:
        return SKILL, shortfall
    if agent.presence is not Presence.ONLINE:
        return (AWAY, "away") if agent.presence is Presence.AWAY else (OFFLINE, "offline")
    if agent.id in w.declined_by:
        return DECLINED, "declined this conversation"
    if load + cost > agent.capacity:
        return CAPACITY, f"no capacity ({load}+{cost} > {agent.capacity})"
    return None


def why_not_eligible(
    agent: AgentState,
    queue: QueueSpec,
    step: Step,
    w: Waiting,
    costs: Mapping[str, int] = DEFAULT_CHANNEL_COSTS,
) -> str | None:
    """None when ``agent`` may take ``w`` during ``step`` of ``queue``, else a short reason a
    supervisor can read ("away", "billing 2 < 4", "no capacity (80+25 > 100)")."""
    sticky_to = w.last_agent_id if step.last_agent_only else None
    found = _reason(
        agent, skill_floors(queue, step), sticky_to, w, channel_cost(w.channel_kind, costs), agent.load
    )
    return None if found is None else found[1]


# ---------------------------------------------------------------------------------------------
# plan(): one pass over the waiting conversations, best first.
#
# The costly parts are shared per group = (queue, step, channel kind): the agents who qualify
# (channels and skills, found by intersecting per-(skill, level) sets), a heap of the online ones
# ordered by the queue's choice, and the counts of static rejection reasons. Loads only grow during a
# plan, so every heap key only gets worse: a stale entry is re-keyed when it surfaces (lazy
# invalidation), and an agent without room for the group's cost leaves that heap for good.
# Per cost, the planner keeps the set of agents with room and, per agent, the groups of that cost it
# belongs to; an assignment that leaves an agent without room for a cost bumps those groups' "full"
# counts (once per agent and group), so explaining a decision never walks every agent.
# ---------------------------------------------------------------------------------------------

_Scored = tuple[float, float, Waiting, QueueSpec | None]  # (score, seconds waited, conversation, queue)
# (key part 1, key part 2, agent id); an entry whose parts no longer match the agent's is stale.
_Entry = tuple[float, float, int]


class _Targets:
    """The agents meeting one (queue, step)'s skill floors, split by presence; shared by its kinds."""

    __slots__ = ("away", "offline", "online", "skilled")

    def __init__(self, skilled: frozenset[int] | None, planner: _Planner) -> None:
        self.skilled = skilled  # None: no floors, everyone qualifies
        if skilled is None:
            self.online, self.away, self.offline = planner.online, planner.away, planner.offline
        else:
            self.online = skilled & planner.online
            self.away = skilled & planner.away
            self.offline = skilled - self.online - self.away


class _Group:
    """The agents a (queue, step, channel kind) may be given to, and what keeps the others out."""

    __slots__ = (
        "cost",
        "first_key",
        "full",
        "full_list",
        "heap",
        "kind",
        "kind_ok",
        "members",
        "presence_examples",
        "second_key",
        "static_counts",
        "static_examples",
        "targets",
    )

    def __init__(self, kind: str, cost: int, targets: _Targets, kind_ok: frozenset[int]) -> None:
        self.kind = kind
        self.cost = cost
        self.targets = targets
        self.kind_ok = kind_ok
        self.heap: list[_Entry] = []
        # The two leading parts of an agent's ordering key, as mappings from agent id.
        self.first_key: Mapping[int, float] = {}
        self.second_key: Mapping[int, float] = {}
        self.members: frozenset[int] = frozenset()  # take the kind, meet the floors, online
        self.full = 0  # members whose load + cost > capacity right now
        self.full_list: list[int] = []
        self.static_counts: dict[str, int] = {}
        self.presence_examples: tuple[Rejection, ...] | None = None  # built when first needed
        self.static_examples: tuple[Rejection, ...] | None = None  # skill and channel; ditto


class _Planner:
    def __init__(
        self,
        agents: Iterable[AgentState],
        now: datetime,
        costs: Mapping[str, int],
        explain_limit: int,
    ) -> None:
        self.costs = costs
        self.limit = max(0, explain_limit)
        self.now_ts = now.timestamp()
        self.agents: dict[int, AgentState] = {a.id: a for a in agents}
        self.order = sorted(self.agents)
        self.load = {a.id: a.load for a in self.agents.values()}
        self.capacity = {a.id: a.capacity for a in self.agents.values()}
        self.share = {a.id: _share(a.load, a.capacity) for a in self.agents.values()}
        self.last = {
            a.id: (-math.inf if a.last_assigned_at is None else a.last_assigned_at.timestamp())
            for a in self.agents.values()
        }
        by_presence: dict[Presence, set[int]] = {p: set() for p in Presence}
        for a in self.agents.values():
            by_presence[a.presence].add(a.id)
        self.online = frozenset(by_presence[Presence.ONLINE])
        self.away = frozenset(by_presence[Presence.AWAY])
        self.offline = frozenset(by_presence[Presence.OFFLINE])
        self.by_skill: dict[str, list[tuple[int, int]]] = {}
        for a in self.agents.values():
            for skill, level in a.skills.items():
                self.by_skill.setdefault(skill, []).append((a.id, level))
        self.at_least: dict[tuple[str, int], frozenset[int]] = {}
        self.kind_sets: dict[str, frozenset[int]] = {}
        self.refusals: dict[str, tuple[Rejection, ...]] = {}
        self.targets: dict[tuple[str, int], _Targets] = {}
        self.groups: dict[tuple[str, int, str], _Group] = {}
        self.floors: dict[tuple[str, int], dict[str, int]] = {}
        self.proficiency: dict[str, dict[int, float]] = {}
        # cost -> agents with room for it; cost -> agent -> groups of that cost holding the agent.
        self.room: dict[int, set[int]] = {}
        self.registry: dict[int, dict[int, list[_Group]]] = {}
        self.capacity_rejections: dict[tuple[int, int, int], Rejection] = {}
        self.presence_rejections: dict[int, Rejection] = {}

    # -- sets shared by groups -------------------------------------------------------------------

    def _skill_set(self, skill: str, level: int) -> frozenset[int]:
        found = self.at_least.get((skill, level))
        if found is None:
            found = frozenset(a for a, have in self.by_skill.get(skill, ()) if have >= level)
            self.at_least[(skill, level)] = found
        return found

    def _skilled(self, floors: Mapping[str, int]) -> frozenset[int] | None:
        """Agents meeting every floor; None when there are no floors (everyone)."""
        if not floors:
            return None
        sets = sorted((self._skill_set(s, level) for s, level in floors.items()), key=len)
        return sets[0].intersection(*sets[1:])

    def _targets(self, queue: QueueSpec, index: int, step: Step) -> _Targets:
        found = self.targets.get((queue.name, index))
        if found is None:
            found = _Targets(self._skilled(self._floors(queue, index, step)), self)
            self.targets[(queue.name, index)] = found
        return found

    def _kind_set(self, kind: str) -> frozenset[int]:
        found = self.kind_sets.get(kind)
        if found is None:
            found = frozenset(
                a.id for a in self.agents.values() if not a.channel_kinds or kind in a.channel_kinds
            )
            self.kind_sets[kind] = found
        return found

    def _refusals(self, kind: str) -> tuple[Rejection, ...]:
        """The first ``limit`` agents (by id) who do not take ``kind``."""
        found = self.refusals.get(kind)
        if found is None:
            kind_ok = self._kind_set(kind)
            refusing = heapq.nsmallest(self.limit, (a for a in self.agents if a not in kind_ok))
            found = self.refusals[kind] = tuple(Rejection(a, f"does not take {kind}") for a in refusing)
        return found

    def _floors(self, queue: QueueSpec, index: int, step: Step) -> dict[str, int]:
        found = self.floors.get((queue.name, index))
        if found is None:
            found = self.floors[(queue.name, index)] = skill_floors(queue, step)
        return found

    def _room(self, cost: int) -> set[int]:
        found = self.room.get(cost)
        if found is None:
            load, capacity = self.load, self.capacity
            found = self.room[cost] = {a for a in self.agents if load[a] + cost <= capacity[a]}
            self.registry[cost] = {a: [] for a in self.agents}
        return found

    def _negated_proficiency(self, queue: QueueSpec) -> dict[int, float]:
        """-(sum of proficiencies in the queue's skills) for every online agent meeting its base
        floors (steps only raise floors, so this covers every step's members)."""
        found = self.proficiency.get(queue.name)
        if found is None:
            skilled = self._skilled(queue.required_skills)
            if skilled is None:
                found = dict.fromkeys(self.online, 0.0)
            else:
                skills = list(queue.required_skills)
                found = {
                    a: -float(sum(self.agents[a].skills[s] for s in skills)) for a in skilled & self.online
                }
            self.proficiency[queue.name] = found
        return found

    def _presence_rejection(self, a: int) -> Rejection:
        found = self.presence_rejections.get(a)
        if found is None:
            found = self.presence_rejections[a] = Rejection(a, str(self.agents[a].presence))
        return found

    def _capacity_rejection(self, a: int, cost: int) -> Rejection:
        key = (a, self.load[a], cost)
        found = self.capacity_rejections.get(key)
        if found is None:
            found = Rejection(a, f"no capacity ({key[1]}+{cost} > {self.capacity[a]})")
            self.capacity_rejections[key] = found
        return found

    def _group(self, queue: QueueSpec, index: int, step: Step, kind: str) -> _Group:
        group = self.groups.get((queue.name, index, kind))
        if group is not None:
            return group
        targets = self._targets(queue, index, step)
        kind_ok = self._kind_set(kind)
        cost = channel_cost(kind, self.costs)
        group = self.groups[(queue.name, index, kind)] = _Group(kind, cost, targets, kind_ok)
        if len(kind_ok) == len(self.agents):  # everyone takes this kind
            group.members = targets.online
            away, offline = len(targets.away), len(targets.offline)
        else:
            group.members = targets.online & kind_ok
            away, offline = len(targets.away & kind_ok), len(targets.offline & kind_ok)
        counts = {
            CHANNEL: len(self.agents) - len(kind_ok),
            SKILL: len(kind_ok) - len(group.members) - away - offline,
            AWAY: away,
            OFFLINE: offline,
        }
        group.static_counts = {reason: n for reason, n in counts.items() if n}
        if queue.choice is AgentChoice.LEAST_OCCUPIED:
            group.first_key, group.second_key = self.share, self.last
        elif queue.choice is AgentChoice.BEST_PROFICIENCY:
            group.first_key, group.second_key = self._negated_proficiency(queue), self.share
        else:
            group.first_key, group.second_key = self.last, self.share
        room = self._room(cost)
        available = list(group.members & room)
        if len(available) < len(group.members):
            group.full_list = sorted(group.members - room)
            group.full = len(group.full_list)
        # One entry per available agent; the key parts are read in C, not per agent in Python.
        group.heap = list(
            zip(
                map(group.first_key.__getitem__, available),
                map(group.second_key.__getitem__, available),
                available,
                strict=True,
            )
        )
        heapq.heapify(group.heap)
        registry = self.registry[cost]
        for a in available:
            registry[a].append(group)
        return group

    def _presence_examples(self, group: _Group) -> tuple[Rejection, ...]:
        if group.presence_examples is None:
            absent = group.targets.away | group.targets.offline
            if len(group.kind_ok) < len(self.agents):
                absent &= group.kind_ok
            group.presence_examples = tuple(
                map(self._presence_rejection, heapq.nsmallest(self.limit, absent))
            )
        return group.presence_examples

    def _static_examples(self, group: _Group, floors: Mapping[str, int]) -> tuple[Rejection, ...]:
        """Up to ``limit`` skill failures (the first by id, found by walking agents in id order and
        stopping once the known count is met), then agents who do not take the kind."""
        if group.static_examples is None:
            want = min(self.limit, group.static_counts.get(SKILL, 0))
            skilled, kind_ok = group.targets.skilled, group.kind_ok
            skill: list[Rejection] = []
            if want and skilled is not None:
                for a in self.order:
                    if a in kind_ok and a not in skilled:
                        shortfall = _skill_shortfall(self.agents[a].skills, floors)
                        skill.append(Rejection(a, shortfall or "below a skill floor"))
                        if len(skill) >= want:
                            break
            group.static_examples = tuple(skill) + self._refusals(group.kind)
        return group.static_examples

    # -- one decision ------------------------------------------------------------------------------

    def assign(self, a: int, cost: int) -> None:
        """Take ``cost`` from agent ``a`` for the rest of the plan; every cost it no longer has room
        for drops it from that cost's room set and counts it as full in that cost's groups."""
        old = self.load[a]
        new = self.load[a] = old + cost
        capacity = self.capacity[a]
        self.share[a] = _share(new, capacity)
        self.last[a] = max(self.last[a], self.now_ts)
        for tier, room in self.room.items():
            if old + tier <= capacity < new + tier:
                room.discard(a)
                for group in self.registry[tier].get(a, ()):
                    group.full += 1
                    group.full_list.append(a)

    def decide_all(self, ordered: Iterable[_Scored]) -> list[Decision]:
        decisions: list[Decision] = []
        for score, waited, w, queue in ordered:
            if queue is None:
                cost = channel_cost(w.channel_kind, self.costs)
                note = f"unknown queue {w.queue!r}"
                decisions.append(Decision(w.conversation_id, w.queue, None, 0, cost, score, note=note))
            else:
                decisions.append(self.decide(w, queue, score, waited))
        return decisions

    def decide(self, w: Waiting, queue: QueueSpec, score: float, waited: float) -> Decision:
        index, step = active_step(queue, waited, w.last_agent_id is not None)
        cost = channel_cost(w.channel_kind, self.costs)
        if step.overflow_to is not None:
            return Decision(
                w.conversation_id,
                queue.name,
                None,
                index,
                cost,
                score,
                overflow_to=step.overflow_to,
                note=f"waited {waited:.0f} s: step {index} overflows to {step.overflow_to!r}",
            )
        if step.last_agent_only and w.last_agent_id is not None:
            return self._decide_sticky(w, queue, index, step, cost, score)
        group = self._group(queue, index, step, w.channel_kind)
        declined = w.declined_by
        heap = group.heap
        load, capacity = self.load, self.capacity
        room = self.room[group.cost]
        first, second = group.first_key, group.second_key
        aside: list[_Entry] = []
        chosen: int | None = None
        while heap:
            k0, k1, a = heap[0]
            if a not in room:
                heapq.heappop(heap)  # no room for this group's cost for the rest of the plan
            elif k0 != first[a] or k1 != second[a]:
                heapq.heapreplace(heap, (first[a], second[a], a))
            elif a in declined:
                aside.append(heapq.heappop(heap))
            else:
                chosen = a
                break
        for entry in aside:
            heapq.heappush(heap, entry)

        declined_members = sorted(d for d in declined if d in group.members) if declined else []
        declined_full = sum(1 for d in declined_members if load[d] + cost > capacity[d])
        busy = group.full - declined_full
        counts = dict(group.static_counts)
        if declined_members:
            counts[DECLINED] = len(declined_members)
        if busy:
            counts[CAPACITY] = busy
        candidates = len(group.members) - len(declined_members) - busy
        rejected = self._examples(group, w, queue, index, step, declined_members, cost)
        if chosen is not None:
            self.assign(chosen, cost)
        return Decision(
            w.conversation_id,
            queue.name,
            chosen,
            index,
            cost,
            score,
            rejected,
            rejected_counts=counts,
            candidates=candidates,
        )

    def _examples(
        self,
        group: _Group,
        w: Waiting,
        queue: QueueSpec,
        index: int,
        step: Step,
        declined_members: list[int],
        cost: int,
    ) -> tuple[Rejection, ...]:
        """The most telling rejections first: qualified but full, qualified but not online, declined,
        then short on skills, then not taking the channel kind."""
        limit = self.limit
        if limit == 0:
            return ()
        if not w.declined_by and len(group.full_list) >= limit:
            return tuple([self._capacity_rejection(a, cost) for a in group.full_list[:limit]])
        out: list[Rejection] = []
        for a in group.full_list:
            if a not in w.declined_by:
                out.append(self._capacity_rejection(a, cost))
                if len(out) >= limit:
                    return tuple(out)
        if AWAY in group.static_counts or OFFLINE in group.static_counts:
            out.extend(self._presence_examples(group))
        out.extend(Rejection(a, "declined this conversation") for a in declined_members)
        if len(out) < limit and (SKILL in group.static_counts or CHANNEL in group.static_counts):
            out.extend(self._static_examples(group, self._floors(queue, index, step)))
        return tuple(out[:limit])

    def _decide_sticky(
        self, w: Waiting, queue: QueueSpec, index: int, step: Step, cost: int, score: float
    ) -> Decision:
        last = w.last_agent_id
        agent = self.agents.get(last) if last is not None else None
        counts = {NOT_LAST_AGENT: len(self.agents) - (agent is not None)}
        chosen: int | None = None
        rejected: tuple[Rejection, ...] = ()
        if agent is not None:
            found = _reason(agent, self._floors(queue, index, step), None, w, cost, self.load[agent.id])
            if found is None:
                chosen = agent.id
            else:
                counts[found[0]] = 1
                rejected = (Rejection(agent.id, found[1]),)[: self.limit]
        if chosen is not None:
            self.assign(chosen, cost)
        return Decision(
            w.conversation_id,
            queue.name,
            chosen,
            index,
            cost,
            score,
            rejected,
            rejected_counts={k: n for k, n in counts.items() if n},
            candidates=int(chosen is not None),
        )


def _share(load: int, capacity: int) -> float:
    return load / capacity if capacity > 0 else math.inf


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: a large plan allocates a few hundred thousand acyclic
    objects (heap entries, decisions), none of which it could free, and its passes cost a third of
    the time. Reference counting still frees everything; the collector resumes afterwards."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def plan(
    queues: Mapping[str, QueueSpec],
    waiting: Iterable[Waiting],
    agents: Iterable[AgentState],
    now: datetime,
    costs: Mapping[str, int] = DEFAULT_CHANNEL_COSTS,
    *,
    explain_limit: int = 10,
) -> list[Decision]:
    """Propose an agent (or an overflow) for every waiting conversation, best first.

    Conversations are taken by effective priority (highest first), then longest waiting, then
    conversation id. Each decision assumes the earlier ones of the same plan took their capacity and
    made their agent the most recently assigned, so one plan never over-commits anyone. A decision
    with ``agent_id`` None is still returned, with its reasons, so the caller can log why.

    A conversation whose queue is not in ``queues`` is not routed: its decision has no agent, step 0,
    its own priority as score and ``note`` "unknown queue '<name>'" (the caller may move it to a
    default queue). An ``overflow_to`` step yields a decision with ``overflow_to`` set; the moved
    conversation is considered in its new queue by the next plan.
    """
    keys: list[tuple[float, datetime, int, int]] = []
    scored: list[_Scored] = []
    for i, w in enumerate(waiting):
        queue = queues.get(w.queue)
        waited = (now - w.enqueued_at).total_seconds()  # exact: step boundaries are compared to it
        score = _score(queue, w.priority, waited) if queue is not None else float(w.priority)
        keys.append((-score, w.enqueued_at, w.conversation_id, i))
        scored.append((score, waited, w, queue))
    keys.sort()
    ordered = [scored[key[3]] for key in keys]
    with _collector_paused():
        # The planner's heaps and sets die inside this call, before the collector resumes.
        return _Planner(agents, now, costs, explain_limit).decide_all(ordered)


# ---------------------------------------------------------------------------------------------
# Which queue a new conversation joins.
# ---------------------------------------------------------------------------------------------

_MISSING = object()


def _primary_subtag(tag: str) -> str:
    """ "es-MX" -> "es" (BCP 47 primary language subtag, compared case-insensitively)."""
    return tag.replace("_", "-").split("-", 1)[0].strip().casefold()


@lru_cache(maxsize=1024)
def _keyword_pattern(keywords: frozenset[str]) -> re.Pattern[str]:
    # Whole words: not preceded or followed by a word character; a phrase matches across any run
    # of white space. Longest first so "credit card" wins over "credit" in the alternation.
    words = sorted((k for k in keywords if k.strip()), key=lambda k: (-len(k), k))
    parts = [r"\s+".join(re.escape(piece) for piece in word.split()) for word in words]
    return re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)", re.IGNORECASE)


def rule_matches(rule: MatchRule, facts: ConversationFacts) -> bool:
    """Every non-empty field of ``rule`` must match: channel kind and channel name exactly, language by
    primary subtag ("es-MX" matches "es"), each contact attribute equal, any keyword as a whole word
    in the first message, ignoring case."""
    if rule.channel_kinds and facts.channel_kind not in rule.channel_kinds:
        return False
    if rule.channels and facts.channel not in rule.channels:
        return False
    if rule.languages:
        if not facts.language:
            return False
        if _primary_subtag(facts.language) not in {_primary_subtag(tag) for tag in rule.languages}:
            return False
    for key, value in rule.contact_attributes.items():
        if facts.contact_attributes.get(key, _MISSING) != value:
            return False
    if rule.keywords and not _keyword_pattern(frozenset(rule.keywords)).search(facts.first_text):
        return False
    return True


def match_queue(queues: Sequence[QueueSpec], facts: ConversationFacts) -> QueueSpec | None:
    """The first queue, in configuration order, whose MatchRule matches; None when none does (the
    configuration normally ends with a catch-all)."""
    for queue in queues:
        if rule_matches(queue.match, facts):
            return queue
    return None
