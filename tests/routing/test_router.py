"""The router's rounds against a real database, with a clock the test moves: matching, presence and
grace periods, offers with timeouts, overflow, stickiness, reopened conversations."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, text

from hub.events import record_events
from hub.model import EventRecord, EventType, utcnow
from routing.config import RoutingSettings
from routing.model import AssignMode, MatchRule, OnAgentAway, QueueSpec, Step
from routing.queues import QueueStore
from routing.service import Router
from storage.engine import Database
from storage.models import Event, Message
from tests.routing.factory import add_agent, add_conversation, agent_row, conversation_row


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


GENERAL = QueueSpec(name="general")


async def make_router(
    database: Database, clock: Clock, *queues: QueueSpec, grace: float = 60.0
) -> tuple[Router, list[EventRecord]]:
    store = QueueStore(database)
    await store.seed(list(queues) or [GENERAL])
    published: list[EventRecord] = []
    settings = RoutingSettings(heartbeat_timeout_seconds=30.0, away_grace_seconds=grace)
    router = Router(database, settings, store, record_events, published.extend, clock=clock)
    return router, published


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def stored_events(database: Database, kind: str) -> list[Event]:
    async with database.read() as s:
        return list((await s.execute(select(Event).where(Event.type == kind).order_by(Event.id))).scalars())


async def test_a_new_conversation_is_queued_and_assigned_with_its_reasons(
    database: Database, clock: Clock
) -> None:
    router, published = await make_router(database, clock)
    ana = await add_agent(database, presence_at=clock.now, last_assigned_at=clock.now - timedelta(minutes=5))
    ben = await add_agent(database, presence_at=clock.now, last_assigned_at=clock.now - timedelta(minutes=1))
    away = await add_agent(database, presence_at=clock.now, status="away", presence="away")
    cid = await add_conversation(database)
    report = await router.run_round()
    assert (report.enqueued, report.assigned) == (1, 1)
    conv = await conversation_row(database, cid)
    assert (conv.queue, conv.assignee_id, conv.enqueued_at) == ("general", ana, None)  # longest idle
    assigned = [e for e in published if e.type == EventType.CONVERSATION_ASSIGNED]
    decision = assigned[0].data["decision"]
    assert decision["agent_id"] == ana and decision["queue"] == "general"
    assert any(r["agent_id"] == away and "away" in r["reason"] for r in decision["rejected"])
    assert (await agent_row(database, ana)).load == 25
    assert (await agent_row(database, ben)).load == 0
    assert len(await stored_events(database, EventType.CONVERSATION_ASSIGNED)) == 1


async def test_nobody_eligible_is_recorded_once_not_every_round(database: Database, clock: Clock) -> None:
    router, _ = await make_router(database, clock)
    await add_agent(database, presence_at=clock.now, status="away", presence="away")
    cid = await add_conversation(database)
    for _ in range(3):
        await router.run_round()
        clock.advance(1)
    await _settle()
    recorded = await stored_events(database, EventType.ROUTING_NO_AGENT)
    assert [e.conversation_id for e in recorded] == [cid]
    assert recorded[0].data["decision"]["agent_id"] is None


async def _settle() -> None:
    import asyncio

    for _ in range(20):  # signals of "nobody eligible" are stored in the background
        await asyncio.sleep(0.02)


async def test_stale_heartbeat_makes_an_agent_offline_and_grace_requeues_unanswered(
    database: Database, clock: Clock
) -> None:
    router, _ = await make_router(database, clock, grace=60)
    ana = await add_agent(database, presence_at=clock.now)
    answered, unanswered = await add_conversation(database), await add_conversation(database)
    await router.run_round()
    assert (await conversation_row(database, answered)).assignee_id == ana
    async with database.write() as s:  # Ana answered one of them
        conv = await conversation_row(database, answered)
        s.add(
            Message(
                conversation_id=answered,
                contact_id=conv.contact_id,
                channel="webchat",
                external_id=None,
                direction="out",
                status="sent",
                agent_id=ana,
                sender=None,
                author_name="Ana",
                text="hi",
                html=None,
                error=None,
                meta={},
                created_at=clock.now + timedelta(seconds=1),
            )
        )
    clock.advance(31)  # no heartbeat for longer than the timeout
    await router.run_round()
    assert (await agent_row(database, ana)).presence == "offline"
    changes = await stored_events(database, EventType.AGENT_PRESENCE_CHANGED)
    assert [(e.agent_id, e.data["previous"], e.data["presence"]) for e in changes][-1] == (
        ana,
        "online",
        "offline",
    )
    clock.advance(30)  # inside the grace period: nothing moves
    await router.run_round()
    assert (await conversation_row(database, unanswered)).assignee_id == ana
    clock.advance(31)
    report = await router.run_round()
    assert report.requeued == 1
    assert (await conversation_row(database, unanswered)).assignee_id is None
    assert (await conversation_row(database, unanswered)).enqueued_at is not None
    assert (await conversation_row(database, answered)).assignee_id == ana
    assert (await agent_row(database, ana)).load == 25


async def test_keep_policy_leaves_conversations_with_an_absent_agent(
    database: Database, clock: Clock
) -> None:
    router, _ = await make_router(
        database, clock, QueueSpec(name="general", on_agent_away=OnAgentAway.KEEP), grace=1
    )
    ana = await add_agent(database, presence_at=clock.now)
    cid = await add_conversation(database)
    await router.run_round()
    await router.choose_status(ana, "away")
    clock.advance(5)
    await router.run_round()
    assert (await conversation_row(database, cid)).assignee_id == ana


async def test_offers_time_out_go_elsewhere_and_reroute_at_once_when_the_agent_leaves(
    database: Database, clock: Clock
) -> None:
    offer = QueueSpec(name="vip", mode=AssignMode.OFFER, offer_timeout_seconds=20)
    router, published = await make_router(database, clock, offer)
    ana = await add_agent(database, presence_at=clock.now, last_assigned_at=clock.now - timedelta(hours=1))
    ben = await add_agent(database, presence_at=clock.now, last_assigned_at=clock.now)
    cid = await add_conversation(database)
    report = await router.run_round()
    assert report.offered == 1
    conv = await conversation_row(database, cid)
    assert (conv.offered_to, conv.assignee_id) == (ana, None)
    assert (await agent_row(database, ana)).load == 25  # the offer reserves capacity
    clock.advance(21)
    await router.run_round()  # expired: declined for Ana, offered to Ben in the same round
    conv = await conversation_row(database, cid)
    assert (conv.offered_to, conv.declined_by) == (ben, [ana])
    assert (await agent_row(database, ana)).load == 0
    await router.choose_status(ben, "away")  # Ben leaves: his offer goes back at once
    conv = await conversation_row(database, cid)
    assert conv.offered_to is None and conv.enqueued_at is not None
    reasons = [e.data["reason"] for e in published if e.type == EventType.OFFER_DECLINED]
    assert reasons == ["expired", "agent_away"]
    await router.choose_status(ben, "online")
    await router.run_round()
    version = (await conversation_row(database, cid)).routing_version
    await router.accept(cid, ben, version)
    conv = await conversation_row(database, cid)
    assert (conv.assignee_id, conv.offered_to) == (ben, None)


async def test_overflow_moves_a_conversation_to_the_next_queue(database: Database, clock: Clock) -> None:
    billing = QueueSpec(
        name="billing",
        required_skills={"billing": 3},
        match=MatchRule(channel_kinds=frozenset({"webchat"})),
        steps=(Step(after_seconds=0), Step(after_seconds=300, overflow_to="general")),
    )
    router, _ = await make_router(database, clock, billing, GENERAL)
    generalist = await add_agent(database, presence_at=clock.now)
    cid = await add_conversation(database)
    await router.run_round()
    conv = await conversation_row(database, cid)
    assert (conv.queue, conv.assignee_id) == ("billing", None)
    clock.advance(301)
    await add_agent_heartbeat(database, generalist, clock.now)
    await router.run_round()
    conv = await conversation_row(database, cid)
    assert (conv.queue, conv.assignee_id) == ("general", generalist)
    async with database.read() as s:
        outcomes = (await s.execute(text("SELECT queue, outcome FROM queue_waits ORDER BY id"))).all()
    assert [tuple(r) for r in outcomes] == [("billing", "moved"), ("general", "answered")]


async def add_agent_heartbeat(database: Database, agent_id: int, at: datetime) -> None:
    async with database.write() as s:
        await s.execute(
            text("UPDATE agents SET presence_at = :at WHERE id = :id"), {"at": at, "id": agent_id}
        )


async def test_sticky_step_prefers_the_last_agent_then_relaxes(database: Database, clock: Clock) -> None:
    sticky = QueueSpec(name="general", steps=(Step(0, last_agent_only=True), Step(after_seconds=30)))
    router, _ = await make_router(database, clock, sticky)
    ana = await add_agent(database, presence_at=clock.now, capacity=25)
    ben = await add_agent(database, presence_at=clock.now, last_assigned_at=clock.now)
    first = await add_conversation(database)
    await router.run_round()  # no last agent yet: the sticky step is skipped
    conv = await conversation_row(database, first)
    assert conv.assignee_id == ana
    again = await add_conversation(database, contact_id=conv.contact_id)
    await router.run_round()
    assert (await conversation_row(database, again)).assignee_id is None  # waits for Ana, who is full
    clock.advance(31)
    for agent in (ana, ben):
        await add_agent_heartbeat(database, agent, clock.now)
    await router.run_round()
    assert (await conversation_row(database, again)).assignee_id == ben


async def test_reopened_conversation_goes_back_to_its_agent(database: Database, clock: Clock) -> None:
    router, _ = await make_router(database, clock)
    ana = await add_agent(database, presence_at=clock.now)
    cid = await add_conversation(database)
    await router.run_round()
    from routing import claim

    async def set_status(status: str) -> None:
        async with database.write() as s:
            await s.execute(
                text("UPDATE conversations SET status = :st WHERE id = :id"), {"st": status, "id": cid}
            )
            await s.run_sync(lambda ss: claim.status_changed(ss, cid, status, now=clock.now))

    await set_status("resolved")
    assert (await agent_row(database, ana)).load == 0
    await set_status("open")
    await router.run_round()
    assert (await agent_row(database, ana)).load == 25
    assert (await conversation_row(database, cid)).assignee_id == ana


async def test_a_wait_past_the_target_is_recorded_once(database: Database, clock: Clock) -> None:
    router, _ = await make_router(database, clock, QueueSpec(name="general", sla_seconds=60))
    cid = await add_conversation(database)
    await router.run_round()  # queued; nobody online
    clock.advance(59)
    await router.run_round()
    assert await stored_events(database, EventType.SLA_BREACHED) == []
    clock.advance(2)
    for _ in range(2):
        await router.run_round()
    breaches = await stored_events(database, EventType.SLA_BREACHED)
    assert [(e.conversation_id, e.data["queue"], e.data["sla_seconds"]) for e in breaches] == [
        (cid, "general", 60)
    ]
    assert breaches[0].data["waited_seconds"] == 61.0
