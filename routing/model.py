"""The router's vocabulary: what it knows about agents, queues and waiting conversations.

These are plain, immutable snapshots. The decision functions (``routing.decide``) are pure
functions over them, so the same code runs inside the hub, in the simulator and in tests with a
controllable clock. The database is the source of truth; a snapshot is read from it, a decision
is proposed from the snapshot, and the claim (``routing.claim``) makes it real or refuses it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# Capacity units a conversation of each channel kind takes from its agent (Twilio TaskRouter's
# per-channel capacity, expressed in one ledger): a call fills an agent, chats share one.
DEFAULT_CHANNEL_COSTS: Mapping[str, int] = {"voice": 100, "webchat": 25, "xmpp": 20, "sms": 20, "email": 10}
DEFAULT_CAPACITY = 100
# Units taken by a channel kind missing from the cost table: a light, email-like item, so a newly added
# kind never blocks an agent outright before someone prices it.
UNKNOWN_CHANNEL_COST = 10


class Presence(enum.StrEnum):
    ONLINE = "online"
    AWAY = "away"
    OFFLINE = "offline"


class AgentChoice(enum.StrEnum):
    """How a queue picks among eligible agents with room."""

    LONGEST_IDLE = "longest_idle"  # the agent whose last assignment is oldest
    LEAST_OCCUPIED = "least_occupied"  # the lowest share of capacity in use
    BEST_PROFICIENCY = "best_proficiency"  # the highest proficiency in the queue's skills


class AssignMode(enum.StrEnum):
    DIRECT = "direct"  # assign at once
    OFFER = "offer"  # offer; the agent accepts or rejects; a timeout re-queues


class OnAgentAway(enum.StrEnum):
    """What happens to an agent's conversations when they go away or offline (after the grace period)."""

    KEEP = "keep"
    REQUEUE = "requeue"
    REQUEUE_UNANSWERED = "requeue_unanswered"  # only those with no agent reply yet


@dataclass(frozen=True, slots=True)
class Step:
    """One stage of a queue's targeting, active once a conversation has waited ``after_seconds``.

    The active step is the last one whose ``after_seconds`` has passed (Amazon Connect's expiring
    proficiency steps, TaskRouter's workflow targets). A step with ``overflow_to`` moves the
    conversation to that queue instead of targeting agents.
    """

    after_seconds: float = 0.0
    # Only the agent who last served this contact (sticky routing).
    last_agent_only: bool = False
    # Overrides the queue's minimum proficiency for its required skills during this step.
    min_proficiency: int | None = None
    overflow_to: str | None = None


@dataclass(frozen=True, slots=True)
class MatchRule:
    """Which conversations a queue takes. Empty fields match anything; all given fields must match."""

    channel_kinds: frozenset[str] = frozenset()  # e.g. {"email", "webchat"}
    channels: frozenset[str] = frozenset()  # channel instance names, e.g. {"support-mail"}
    languages: frozenset[str] = frozenset()  # e.g. {"es"}
    # Contact attributes that must equal these values, e.g. {"tier": "gold"}.
    contact_attributes: Mapping[str, Any] = field(default_factory=dict)
    # Any of these words (case-insensitive, whole words) in the first message.
    keywords: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    match: MatchRule = field(default_factory=MatchRule)
    # Skill -> minimum proficiency (1-5) an agent needs to take this queue's conversations.
    required_skills: Mapping[str, int] = field(default_factory=dict)
    priority: int = 0
    # First-response target: share answered within this is the queue's service level.
    sla_seconds: float = 60.0
    steps: tuple[Step, ...] = (Step(),)
    choice: AgentChoice = AgentChoice.LONGEST_IDLE
    mode: AssignMode = AssignMode.DIRECT
    offer_timeout_seconds: float = 30.0
    # Priority points gained per minute of waiting, so low priority never starves.
    ageing_per_minute: float = 1.0
    on_agent_away: OnAgentAway = OnAgentAway.REQUEUE_UNANSWERED


@dataclass(frozen=True, slots=True)
class AgentState:
    id: int
    name: str
    presence: Presence
    capacity: int = DEFAULT_CAPACITY
    load: int = 0  # capacity units in use now
    skills: Mapping[str, int] = field(default_factory=dict)  # skill -> proficiency 1-5
    # Channel kinds this agent takes; empty means all.
    channel_kinds: frozenset[str] = frozenset()
    last_assigned_at: datetime | None = None
    active_conversations: int = 0


@dataclass(frozen=True, slots=True)
class Waiting:
    """A conversation waiting in a queue."""

    conversation_id: int
    queue: str
    channel_kind: str
    enqueued_at: datetime
    priority: int = 0  # the conversation's own priority (0-4), added to the queue's
    last_agent_id: int | None = None  # who last served this contact, for sticky steps
    # Agents who rejected this conversation or let its offer expire: never offered it again.
    declined_by: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class ConversationFacts:
    """What a queue's MatchRule is matched against when a new conversation is routed."""

    channel_kind: str
    channel: str
    language: str | None = None  # BCP 47 tag as known, e.g. "es-MX"
    contact_attributes: Mapping[str, Any] = field(default_factory=dict)
    first_text: str = ""


@dataclass(frozen=True, slots=True)
class Rejection:
    agent_id: int
    reason: str  # e.g. "offline", "no capacity (80+25 > 100)", "billing 2 < 4"


@dataclass(frozen=True, slots=True)
class Decision:
    """What the router proposes for one waiting conversation, and why."""

    conversation_id: int
    queue: str
    agent_id: int | None  # None: nobody eligible now
    step: int  # index of the active step
    cost: int  # capacity units the assignment takes
    score: float  # the conversation's effective priority when decided
    rejected: tuple[Rejection, ...] = ()
    overflow_to: str | None = None  # set instead of agent_id when the step moves it to another queue
    # Why each agent was not chosen, counted by kind for every agent in the snapshot
    # ("skill", "channel", "offline", "away", "declined", "capacity", "not_last_agent");
    # when agents were considered (not for an overflow or an unknown queue),
    # sum(rejected_counts.values()) + candidates == number of agents in the snapshot.
    rejected_counts: Mapping[str, int] = field(default_factory=dict)
    candidates: int = 0  # agents eligible when decided (the chosen one included)
    note: str | None = None  # e.g. "unknown queue 'x'", "waited 301 s: overflow to 'general'"

    def explain(self) -> dict[str, Any]:
        """The event payload that answers "why did this go to Ana?"."""
        return {
            "queue": self.queue,
            "agent_id": self.agent_id,
            "step": self.step,
            "cost": self.cost,
            "score": round(self.score, 3),
            "overflow_to": self.overflow_to,
            "rejected": [{"agent_id": r.agent_id, "reason": r.reason} for r in self.rejected],
            "rejected_counts": dict(self.rejected_counts),
            "candidates": self.candidates,
            "note": self.note,
        }
