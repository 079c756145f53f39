"""Queue statistics, the agents' overview and the Prometheus metrics, on SQLite and PostgreSQL.

Rows are written directly with exact timestamps, so every figure is known by hand: service level
with the short-abandon rule, percentiles, SLA risk, eligibility and availability, presence freshness,
capacity by channel. The clock is fixed at NOW."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from hub.model import EventRecord
from routing.model import MatchRule, QueueSpec
from routing.stats import (
    SHORT_ABANDON_SECONDS,
    UNQUEUED,
    Supervision,
    cheapest_cost,
    percentile,
    without_clock_fields,
)
from storage.engine import Database
from storage.models import Agent, Contact, Conversation, QueueWait
from tests.prometheus import parse_exposition

NOW = datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)
COSTS = {"voice": 100, "webchat": 25, "email": 10}
HEARTBEAT_TIMEOUT = 30.0
BILLING = QueueSpec(
    "billing",
    match=MatchRule(channel_kinds=frozenset({"email", "webchat"})),
    required_skills={"billing": 3},
    priority=2,
    sla_seconds=60,
)
SALES = QueueSpec("sales", match=MatchRule(channel_kinds=frozenset({"voice"})), sla_seconds=20)
QUEUES = [BILLING, SALES]


def ago(seconds: float, at: datetime = NOW) -> datetime:
    return at - timedelta(seconds=seconds)


class Floor:
    """Writes rows with explicit ids and timestamps."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.ids = iter(range(1, 100_000))

    async def contact(self) -> int:
        cid = next(self.ids)
        async with self.db.write() as s:
            await s.execute(
                insert(Contact).values(id=cid, name="c", attributes={}, created_at=NOW, updated_at=NOW)
            )
        return cid

    async def agent(self, name: str, **values: Any) -> int:
        aid = next(self.ids)
        row = {
            "id": aid,
            "email": f"{name.lower()}@example.com",
            "name": name,
            "role": "agent",
            "password_hash": "x",
            "active": True,
            "created_at": NOW,
            "status": "online",
            "presence_at": ago(1),
            **values,
        }
        async with self.db.write() as s:
            await s.execute(insert(Agent).values(**row))
        return aid

    async def conversation(self, contact: int, channel_kind: str = "email", **values: Any) -> int:
        cid = next(self.ids)
        row = {
            "id": cid,
            "contact_id": contact,
            "channel": channel_kind,
            "channel_kind": channel_kind,
            "address": "a",
            "status": "open",
            "created_at": NOW,
            "updated_at": NOW,
            "last_message_at": NOW,
            **values,
        }
        async with self.db.write() as s:
            await s.execute(insert(Conversation).values(**row))
        return cid

    async def waits(self, queue: str, *stays: tuple[str | None, float, datetime | None]) -> None:
        """Stays as (outcome, wait seconds, ended_at); an open stay has ended_at None and waited
        ``wait`` seconds until NOW."""
        rows = []
        for outcome, wait, ended in stays:
            end = ended if ended is not None else NOW
            rows.append(
                {
                    "id": next(self.ids),
                    "conversation_id": next(self.ids),
                    "queue": queue,
                    "channel_kind": "email",
                    "priority": 0,
                    "enqueued_at": end - timedelta(seconds=wait),
                    "ended_at": ended,
                    "outcome": outcome,
                }
            )
        async with self.db.write() as s:
            await s.execute(insert(QueueWait), rows)


def supervision(db: Database, queues: Sequence[QueueSpec] = QUEUES, clock: Any = None) -> Supervision:
    async def current() -> Sequence[QueueSpec]:
        return queues

    return Supervision(db, current, COSTS, HEARTBEAT_TIMEOUT, clock or (lambda: NOW))


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {q["name"]: q for q in report["queues"]}


# -- waiting now ------------------------------------------------------------------------------------


async def test_waiting_conversations_by_queue_priority_and_sla_risk(database: Database) -> None:
    floor = Floor(database)
    contact = await floor.contact()
    agent = await floor.agent("Ana")
    waiting = {"queue": "billing", "status": "open"}
    await floor.conversation(contact, enqueued_at=ago(70), priority=1, **waiting)  # past the 60 s target
    await floor.conversation(contact, enqueued_at=ago(50), priority=0, **waiting)  # past 80 % (48 s)
    await floor.conversation(contact, enqueued_at=ago(48), priority=0, **waiting)  # exactly 80 %: not yet
    await floor.conversation(
        contact, enqueued_at=ago(10), priority=1, offered_to=agent, assigned_cost=10, **waiting
    )
    await floor.conversation(contact, enqueued_at=ago(5), status="pending", queue="billing")
    # Not waiting: assigned (queue kept), resolved, never enqueued.
    await floor.conversation(
        contact, queue="billing", assignee_id=agent, assigned_cost=10, assigned_at=ago(99)
    )
    await floor.conversation(contact, queue="billing", enqueued_at=ago(500), status="resolved")
    await floor.conversation(contact, queue="billing")
    # Waiting where no configured queue is.
    await floor.conversation(contact, queue="retired", enqueued_at=ago(100))
    await floor.conversation(contact, queue=None, enqueued_at=ago(7))

    report = await supervision(database).queues()
    billing, sales = by_name(report)["billing"], by_name(report)["sales"]
    assert billing["waiting"] == 5
    assert billing["waiting_by_priority"] == {"0": 3, "1": 2}
    assert billing["offered"] == 1
    assert billing["longest_wait_seconds"] == 70.0
    assert billing["oldest_enqueued_at"] == ago(70).isoformat()
    assert (billing["sla_at_risk"], billing["sla_breached_now"]) == (1, 1)
    assert (billing["priority"], billing["sla_seconds"]) == (2, 60)
    assert sales["waiting"] == sales["offered"] == sales["sla_at_risk"] == sales["sla_breached_now"] == 0
    assert sales["waiting_by_priority"] == {} and sales["longest_wait_seconds"] == 0.0
    assert sales["oldest_enqueued_at"] is None
    assert report["unqueued"] == {
        "name": UNQUEUED,
        "waiting": 2,
        "oldest_enqueued_at": ago(100).isoformat(),
        "longest_wait_seconds": 100.0,
    }
    assert [q["name"] for q in report["queues"]] == ["billing", "sales"]  # configured ones only
    assert "abandon" in report["service_level_rule"]


# -- ended stays: service level, speed of answer, percentiles ---------------------------------------

# billing, target 60 s. The last 15 minutes, then earlier today, then yesterday.
BILLING_STAYS: list[tuple[str | None, float, datetime | None]] = [
    ("answered", 30, ago(5 * 60)),
    ("answered", 60, datetime(2026, 3, 10, 11, 50, 0, 250_000, tzinfo=UTC)),  # exactly the target
    ("answered", 61, ago(10 * 60)),
    ("abandoned", 3, ago(2 * 60)),  # short abandons: not counted
    ("abandoned", SHORT_ABANDON_SECONDS, ago(3 * 60)),
    ("abandoned", 40, ago(8 * 60)),
    ("answered", 10, datetime(2026, 3, 10, 9, tzinfo=UTC)),
    ("answered", 50, datetime(2026, 3, 10, 8, tzinfo=UTC)),
    ("answered", 20, datetime(2026, 3, 10, 10, 30, tzinfo=UTC)),
    ("answered", 120, datetime(2026, 3, 10, 0, 1, tzinfo=UTC)),  # enqueued yesterday, answered today
    ("moved", 500, datetime(2026, 3, 10, 10, tzinfo=UTC)),  # counts in the next queue
    ("answered", 1, datetime(2026, 3, 9, 23, tzinfo=UTC)),
    ("abandoned", 50, datetime(2026, 3, 9, 22, tzinfo=UTC)),
    (None, 45, None),  # still waiting
]


async def ended_stays(floor: Floor) -> None:
    await floor.waits("billing", *BILLING_STAYS)
    await floor.waits("sales", ("answered", 25, ago(60)))
    await floor.waits("retired", ("answered", 1, ago(60)))


async def test_service_level_counts_abandons_after_the_short_threshold(database: Database) -> None:
    await ended_stays(Floor(database))
    queues = by_name(await supervision(database).queues())
    billing = queues["billing"]
    # Last 15 min: answered 30, 60, 61 (two within 60 s); abandoned 40 counts, 3 and 5 do not.
    # Today: answered 30, 60, 61, 10, 50, 20, 120 (five within); the same one abandon counts.
    assert billing["service_level"] == {
        "rolling_15m": 0.5,
        "today": 0.625,
        "answered": 7,
        "answered_within_sla": 5,
        "abandoned": 1,
    }
    assert billing["answered_today"] == 7
    assert billing["abandoned_today"] == 3
    assert billing["average_speed_of_answer_seconds"] == round((30 + 60 + 61 + 10 + 50 + 20 + 120) / 7, 3)
    # Today's answered and abandoned waits: 3 5 10 20 30 40 50 60 61 120.
    assert billing["wait_p50_seconds"] == 35.0
    assert billing["wait_p90_seconds"] == 66.9
    sales = queues["sales"]
    assert sales["service_level"] == {
        "rolling_15m": 0.0,
        "today": 0.0,
        "answered": 1,
        "answered_within_sla": 0,
        "abandoned": 0,
    }
    assert sales["wait_p50_seconds"] == sales["wait_p90_seconds"] == 25.0


async def test_an_empty_window_has_no_service_level(database: Database) -> None:
    await Floor(database).waits("billing", ("answered", 10, datetime(2026, 3, 10, 9, tzinfo=UTC)))
    billing = by_name(await supervision(database).queues())["billing"]
    assert billing["service_level"]["rolling_15m"] is None
    assert billing["service_level"]["today"] == 1.0
    sales = by_name(await supervision(database).queues())["sales"]
    assert sales["service_level"]["today"] is None
    assert sales["average_speed_of_answer_seconds"] is None
    assert sales["wait_p50_seconds"] is None and sales["wait_p90_seconds"] is None


async def test_the_rolling_window_reaches_back_before_midnight(database: Database) -> None:
    just_after = datetime(2026, 3, 10, 0, 5, tzinfo=UTC)
    await Floor(database).waits(
        "billing",
        ("answered", 90, datetime(2026, 3, 9, 23, 55, tzinfo=UTC)),  # yesterday, but 10 minutes ago
        ("answered", 10, datetime(2026, 3, 10, 0, 1, tzinfo=UTC)),
    )
    billing = by_name(await supervision(database, clock=lambda: just_after).queues())["billing"]
    assert billing["service_level"]["rolling_15m"] == 0.5
    assert billing["service_level"]["today"] == 1.0


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10, 11, 101])
def test_percentiles_interpolate_like_statistics_quantiles(n: int) -> None:
    values = sorted((i * 7919) % 113 + 0.5 for i in range(n))
    for pct in (50, 90):
        expected = values[0] if n == 1 else statistics.quantiles(values, n=100, method="inclusive")[pct - 1]
        assert percentile(values, pct) == pytest.approx(expected, abs=1e-3)
    assert percentile([], 50) is None


async def test_todays_figures_are_topped_up_without_counting_a_stay_twice(database: Database) -> None:
    floor = Floor(database)
    clock = [NOW]
    watcher = supervision(database, clock=lambda: clock[0])
    await floor.waits("billing", ("answered", 10, ago(600)))
    assert by_name(await watcher.queues())["billing"]["answered_today"] == 1
    # Committed after that read, though it ended before it (a slow transaction): still counted.
    await floor.waits("billing", ("answered", 90, ago(60)), ("abandoned", 30, ago(1)))
    clock[0] = NOW + timedelta(seconds=1)
    billing = by_name(await watcher.queues())["billing"]
    assert (billing["answered_today"], billing["abandoned_today"]) == (2, 1)
    assert billing["service_level"]["today"] == round(1 / 3, 4)
    assert billing["wait_p50_seconds"] == 30.0
    clock[0] = NOW + timedelta(seconds=2)
    assert by_name(await watcher.queues())["billing"]["answered_today"] == 2  # re-read, not re-counted
    clock[0] = datetime(2026, 3, 11, 0, 0, 1, tzinfo=UTC)  # a new day
    billing = by_name(await watcher.queues())["billing"]
    assert (billing["answered_today"], billing["abandoned_today"], billing["wait_p50_seconds"]) == (
        0,
        0,
        None,
    )


# -- agents -----------------------------------------------------------------------------------------


async def agent_floor(floor: Floor) -> dict[str, int]:
    """Agents for billing (billing >= 3; email 10, webchat 25) and sales (voice 100)."""
    contact = await floor.contact()
    ids = {
        # Skilled, but 5 units free: less than billing's cheapest (email, 10) and than a call.
        "ana": await floor.agent(
            "Ana", skills={"billing": 4}, capacity=75, load=70, last_assigned_at=ago(90)
        ),
        # Heartbeat exactly as old as the timeout: still fresh. Email only: no calls.
        "ben": await floor.agent("Ben", skills={"billing": 3}, channel_kinds=["email"], presence_at=ago(30)),
        "cy": await floor.agent("Cy", skills={"billing": 2}),  # too little billing; free for a call
        "di": await floor.agent(  # chose online, but the inbox went quiet
            "Di", skills={"billing": 5}, channel_kinds=["webchat", "voice"], presence_at=ago(30.001)
        ),
        "ed": await floor.agent("Ed", skills={"billing": 5}, status="away"),
        "flo": await floor.agent("Flo", skills={"billing": "high"}, status="offline"),
        "gus": await floor.agent("Gus", skills={"billing": 5}, presence_at=None),  # never connected
        "old": await floor.agent("Old", skills={"billing": 5}, active=False),
    }
    ana = ids["ana"]
    await floor.conversation(contact, "email", assignee_id=ana, assigned_cost=10, assigned_at=ago(300))
    await floor.conversation(
        contact, "webchat", status="pending", assignee_id=ana, assigned_cost=25, assigned_at=ago(200)
    )
    await floor.conversation(
        contact, "webchat", status="snoozed", assignee_id=ana, assigned_cost=25, assigned_at=ago(100)
    )
    await floor.conversation(
        contact,
        "email",
        queue="billing",
        enqueued_at=ago(20),
        offered_to=ana,
        assigned_cost=10,
        offer_expires_at=ago(-10),
    )
    # Holds nothing: resolved, or reopened and not charged again yet.
    await floor.conversation(contact, "email", status="resolved", assignee_id=ana, assigned_cost=0)
    await floor.conversation(contact, "email", assignee_id=ana, assigned_cost=0)
    return ids


async def test_eligible_and_available_agents_per_queue(database: Database) -> None:
    await agent_floor(Floor(database))
    queues = by_name(await supervision(database).queues())
    # billing: Ana, Ben, Di, Ed, Gus have the skill (Flo's "high" is no level; Old is inactive);
    # only Ben is online with room for an email.
    assert (queues["billing"]["eligible_agents"], queues["billing"]["available_agents"]) == (5, 1)
    # sales takes any skill but only calls: Ben takes email only; Cy is online with a free 100.
    assert (queues["sales"]["eligible_agents"], queues["sales"]["available_agents"]) == (6, 1)


async def test_agents_overview(database: Database) -> None:
    ids = await agent_floor(Floor(database))
    agents = {a["name"]: a for a in (await supervision(database).agents())["agents"]}
    assert list(agents) == ["Ana", "Ben", "Cy", "Di", "Ed", "Flo", "Gus"]  # active ones, by name
    ana = agents["Ana"]
    assert ana["id"] == ids["ana"] and ana["email"] == "ana@example.com" and ana["role"] == "agent"
    assert (ana["capacity"], ana["load"]) == (75, 70)
    assert ana["load_by_channel"] == {"email": 20, "webchat": 50}
    assert (ana["active_conversations"], ana["offers"]) == (3, 1)
    assert [(c["channel_kind"], c["status"], c["cost"], c["offered"]) for c in ana["conversations"]] == [
        ("email", "open", 10, False),
        ("webchat", "pending", 25, False),
        ("webchat", "snoozed", 25, False),
        ("email", "open", 10, True),
    ]
    assert ana["conversations"][0]["assigned_at"] == ago(300).isoformat()
    assert ana["conversations"][3]["assigned_at"] is None
    assert ana["conversations"][3]["offer_expires_at"] == ago(-10).isoformat()
    assert ana["skills"] == {"billing": 4} and ana["channel_kinds"] == []
    assert ana["last_assigned_at"] == ago(90).isoformat()
    assert ana["seconds_since_last_assignment"] == 90.0
    assert agents["Ben"]["seconds_since_last_assignment"] is None
    assert agents["Ben"]["load_by_channel"] == {} and agents["Ben"]["conversations"] == []
    assert agents["Ben"]["channel_kinds"] == ["email"]

    presence = {name: (a["status"], a["presence"], a["connected"]) for name, a in agents.items()}
    assert presence == {
        "Ana": ("online", "online", True),
        "Ben": ("online", "online", True),  # heartbeat exactly at the timeout
        "Cy": ("online", "online", True),
        "Di": ("online", "offline", False),  # heartbeat 1 ms too old
        "Ed": ("away", "away", True),
        "Flo": ("offline", "offline", True),  # inbox open, chose offline
        "Gus": ("online", "offline", False),
    }


# -- Prometheus -------------------------------------------------------------------------------------


async def test_metrics_in_prometheus_text_format(database: Database) -> None:
    floor = Floor(database)
    ids = await agent_floor(floor)
    await ended_stays(floor)
    contact = await floor.contact()
    await floor.conversation(contact, queue="billing", enqueued_at=ago(70))
    families = parse_exposition(await supervision(database).metrics())

    def value(name: str, **labels: str) -> float:
        return families[name]["samples"][tuple(labels.items())]

    assert value("hub_queue_waiting", queue="billing") == 2  # and Ana's offer
    assert value("hub_queue_waiting", queue=UNQUEUED) == 0
    assert value("hub_queue_longest_wait_seconds", queue="billing") == 70
    assert value("hub_queue_available_agents", queue="billing") == 1
    assert value("hub_queue_service_level_ratio", queue="billing", window="15m") == 0.5
    assert value("hub_queue_service_level_ratio", queue="billing", window="today") == 0.625
    # All time, yesterday included: answered 8; abandoned 4; late 61 and 120, abandons 40 and 50.
    assert value("hub_queue_assignments_total", queue="billing") == 8
    assert value("hub_queue_abandoned_total", queue="billing") == 4
    assert value("hub_queue_sla_breaches_total", queue="billing") == 4
    assert value("hub_queue_sla_breaches_total", queue="sales") == 1
    assert value("hub_agents", presence="online") == 3
    assert value("hub_agents", presence="away") == 1
    assert value("hub_agents", presence="offline") == 3
    assert value("hub_agent_load_ratio", agent=str(ids["ana"])) == pytest.approx(70 / 75)
    assert families["hub_queue_assignments_total"]["type"] == "counter"
    assert families["hub_queue_waiting"]["type"] == "gauge"
    assert ("queue", "retired") not in {k for f in families.values() for s in f["samples"] for k in s}


async def test_all_time_counters_do_not_move_when_the_day_turns(database: Database) -> None:
    floor = Floor(database)
    await ended_stays(floor)
    clock = [NOW]
    watcher = supervision(database, clock=lambda: clock[0])

    async def totals() -> list[float]:
        families = parse_exposition(await watcher.metrics())
        return [
            value
            for name in (
                "hub_queue_assignments_total",
                "hub_queue_abandoned_total",
                "hub_queue_sla_breaches_total",
            )
            for value in families[name]["samples"].values()
        ]

    expected = await totals()
    assert expected == [8, 1, 4, 0, 4, 1]
    for at in (
        datetime(2026, 3, 11, 0, 2, tzinfo=UTC),  # before the cut moves
        datetime(2026, 3, 11, 0, 10, tzinfo=UTC),  # after: yesterday is counted once and kept
        datetime(2026, 3, 11, 0, 11, tzinfo=UTC),
    ):
        clock[0] = at
        assert await totals() == expected, at
    await floor.waits("billing", ("answered", 61, datetime(2026, 3, 11, 0, 10, 30, tzinfo=UTC)))
    assert await totals() == [9, 1, 4, 0, 5, 1]


def test_cheapest_cost_is_over_the_channel_kinds_both_take() -> None:
    assert cheapest_cost(frozenset({"voice", "email"}), frozenset(), COSTS) == 10
    assert cheapest_cost(frozenset({"voice", "email"}), frozenset({"voice"}), COSTS) == 100
    assert cheapest_cost(frozenset({"voice"}), frozenset({"email"}), COSTS) is None
    assert cheapest_cost(frozenset(), frozenset({"webchat"}), COSTS) == 25
    assert cheapest_cost(frozenset(), frozenset(), COSTS) == 10


# -- the live view ----------------------------------------------------------------------------------


async def test_run_pushes_when_a_report_changes_and_not_when_only_the_clock_ticks(database: Database) -> None:
    floor = Floor(database)
    contact = await floor.contact()
    await floor.agent("Ana")
    clock = [NOW]
    watcher = supervision(database, clock=lambda: clock[0])
    pushed: asyncio.Queue[EventRecord] = asyncio.Queue()

    def publish(events: list[EventRecord]) -> None:
        for event in events:
            pushed.put_nowait(event)

    task = asyncio.get_running_loop().create_task(watcher.run(publish, interval=0.01))
    try:
        first = {(e := await asyncio.wait_for(pushed.get(), 5)).type: e for _ in range(2)}
        assert set(first) == {"queues.updated", "agents.updated"}
        assert all(e.id is None for e in first.values())  # live-only: never stored
        assert by_name(first["queues.updated"].data)["billing"]["waiting"] == 0

        await floor.conversation(contact, queue="billing", enqueued_at=ago(1))
        event = await asyncio.wait_for(pushed.get(), 5)
        assert event.type == "queues.updated"
        assert by_name(event.data)["billing"]["waiting"] == 1

        # Only the clock moves (the wait grows): nothing to push. Then a real change is pushed next.
        clock[0] = NOW + timedelta(seconds=3)
        await asyncio.sleep(0.1)
        assert pushed.empty()
        await floor.conversation(contact, queue="sales", enqueued_at=ago(1))
        event = await asyncio.wait_for(pushed.get(), 5)
        assert by_name(event.data)["sales"]["waiting"] == 1
        assert by_name(event.data)["billing"]["longest_wait_seconds"] == 4.0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_logs_a_failure_and_goes_on(database: Database, caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def flaky() -> Sequence[QueueSpec]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("queues unavailable")
        return QUEUES

    watcher = Supervision(database, flaky, COSTS, HEARTBEAT_TIMEOUT, lambda: NOW)
    pushed: asyncio.Queue[EventRecord] = asyncio.Queue()
    task = asyncio.get_running_loop().create_task(
        watcher.run(lambda events: [pushed.put_nowait(e) for e in events], interval=0.01)
    )
    try:
        types = {(await asyncio.wait_for(pushed.get(), 5)).type for _ in range(2)}
        while "queues.updated" not in types:
            types.add((await asyncio.wait_for(pushed.get(), 5)).type)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert "queues unavailable" in caplog.text


def test_clock_fields_are_not_news() -> None:
    before = {
        "queues": [{"waiting": 1, "longest_wait_seconds": 3.0}],
        "agents": [{"seconds_since_last_assignment": 1}],
    }
    after = {
        "queues": [{"waiting": 1, "longest_wait_seconds": 4.0}],
        "agents": [{"seconds_since_last_assignment": 2}],
    }
    assert without_clock_fields(before) == without_clock_fields(after)
