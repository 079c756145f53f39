"""The claim path on SQLite and PostgreSQL: one owner, a capacity ledger that never overruns,
versions that fence stale decisions, queue stays that end with the right outcome."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from hub.model import EventType, Refused, utcnow
from routing import claim
from routing.model import DEFAULT_CHANNEL_COSTS
from storage.engine import Database
from storage.models import Agent, QueueWait
from tests.routing.factory import add_agent, add_conversation, agent_row, conversation_row

COSTS = DEFAULT_CHANNEL_COSTS


async def test_assign_charges_the_ledger_and_a_transfer_moves_the_charge(database: Database) -> None:
    ana, ben = await add_agent(database), await add_agent(database)
    cid = await add_conversation(database, channel_kind="webchat")
    now = utcnow()
    events = await database.run_write(
        lambda s: claim.assign(s, cid, ana, costs=COSTS, now=now, reason="manual", by=ana)
    )
    assert [e.type for e in events] == [EventType.CONVERSATION_ASSIGNED]
    assert events[0].data["assignee_id"] == ana and events[0].data["cost"] == 25
    assert (await agent_row(database, ana)).load == 25
    events = await database.run_write(
        lambda s: claim.assign(s, cid, ben, costs=COSTS, now=now, reason="transfer", by=ana)
    )
    assert events[0].data["previous_assignee_id"] == ana
    assert (await agent_row(database, ana)).load == 0
    assert (await agent_row(database, ben)).load == 25
    conv = await conversation_row(database, cid)
    assert (conv.assignee_id, conv.assigned_cost) == (ben, 25)


async def test_a_full_agent_is_a_refused_claim_that_writes_nothing(database: Database) -> None:
    ana = await add_agent(database, capacity=50)
    first, second, third = [await add_conversation(database) for _ in range(3)]
    now = utcnow()
    for cid in (first, second):
        await database.run_write(
            lambda s, cid=cid: claim.assign(s, cid, ana, costs=COSTS, now=now, reason="r")
        )
    with pytest.raises(Refused) as refused:
        await database.run_write(lambda s: claim.assign(s, third, ana, costs=COSTS, now=now, reason="r"))
    assert refused.value.error == "no_capacity"
    assert "50+25 > 50" in refused.value.detail
    assert (await agent_row(database, ana)).load == 50
    assert (await conversation_row(database, third)).assignee_id is None


async def test_the_database_itself_refuses_an_overrun(database: Database) -> None:
    ana = await add_agent(database, capacity=10)
    with pytest.raises(IntegrityError):
        async with database.write() as s:
            await s.execute(update(Agent).where(Agent.id == ana).values(load=11))
    with pytest.raises(IntegrityError):
        async with database.write() as s:
            await s.execute(update(Agent).where(Agent.id == ana).values(load=-1))


async def test_a_stale_version_is_refused(database: Database) -> None:
    ana = await add_agent(database)
    cid = await add_conversation(database)
    version = (await conversation_row(database, cid)).routing_version
    now = utcnow()
    await database.run_write(lambda s: claim.enqueue(s, cid, "general", now=now, reason="matched"))
    with pytest.raises(Refused) as refused:
        await database.run_write(
            lambda s: claim.assign(
                s, cid, ana, costs=COSTS, now=now, reason="routed", expected_version=version
            )
        )
    assert refused.value.error == "conflict"
    assert (await agent_row(database, ana)).load == 0


async def test_a_queue_stay_ends_answered_or_abandoned(database: Database) -> None:
    ana = await add_agent(database)
    answered, abandoned = await add_conversation(database), await add_conversation(database)
    start = utcnow()
    for cid in (answered, abandoned):
        await database.run_write(
            lambda s, cid=cid: claim.enqueue(s, cid, "general", now=start, reason="matched")
        )
    later = start + timedelta(seconds=42)
    events = await database.run_write(
        lambda s: claim.assign(s, answered, ana, costs=COSTS, now=later, reason="routed")
    )
    assert events[0].data["wait_seconds"] == 42.0
    async with database.write() as s:
        await s.execute(
            text("UPDATE conversations SET status = 'resolved' WHERE id = :id"), {"id": abandoned}
        )
        await s.run_sync(lambda ss: claim.status_changed(ss, abandoned, "resolved", now=later))
    async with database.read() as s:
        stays = {
            w.conversation_id: (w.outcome, w.agent_id, w.ended_at - w.enqueued_at)
            for w in (await s.execute(select(QueueWait))).scalars()
        }
    assert stays == {
        answered: ("answered", ana, timedelta(seconds=42)),
        abandoned: ("abandoned", None, timedelta(seconds=42)),
    }
    conv = await conversation_row(database, answered)
    assert (conv.queue, conv.enqueued_at) == ("general", None)  # the queue stays; the wait is over


async def test_resolving_gives_capacity_back_and_reopening_backs_or_requeues(database: Database) -> None:
    ana = await add_agent(database, capacity=25)
    cid = await add_conversation(database, queue="general")
    now = utcnow()
    await database.run_write(lambda s: claim.assign(s, cid, ana, costs=COSTS, now=now, reason="r"))

    async def set_status(status: str) -> None:
        async with database.write() as s:
            await s.execute(
                text("UPDATE conversations SET status = :st WHERE id = :id"), {"st": status, "id": cid}
            )
            await s.run_sync(lambda ss: claim.status_changed(ss, cid, status, now=now))

    await set_status("resolved")
    assert (await agent_row(database, ana)).load == 0
    assert (await conversation_row(database, cid)).assignee_id == ana  # who served it is remembered
    await set_status("open")
    await database.run_write(
        lambda s: claim.back_assignment(s, cid, costs=COSTS, now=now, assignee_online=True)
    )
    assert (await agent_row(database, ana)).load == 25
    await set_status("resolved")
    # Ana is now full with another chat: the reopened conversation goes back to its queue.
    other = await add_conversation(database)
    await database.run_write(lambda s: claim.assign(s, other, ana, costs=COSTS, now=now, reason="r"))
    await set_status("open")
    events = await database.run_write(
        lambda s: claim.back_assignment(s, cid, costs=COSTS, now=now, assignee_online=True)
    )
    assert [e.type for e in events] == [EventType.CONVERSATION_ASSIGNED, EventType.CONVERSATION_QUEUED]
    conv = await conversation_row(database, cid)
    assert (conv.assignee_id, conv.queue, conv.enqueued_at is not None) == (None, "general", True)
    assert (await agent_row(database, ana)).load == 25


async def test_offers_reserve_capacity_and_a_stale_accept_fails(database: Database) -> None:
    ana, ben = await add_agent(database), await add_agent(database)
    cid = await add_conversation(database)
    now = utcnow()
    await database.run_write(lambda s: claim.enqueue(s, cid, "vip", now=now, reason="matched"))
    events = await database.run_write(
        lambda s: claim.offer(s, cid, ana, costs=COSTS, now=now, expires_at=now + timedelta(seconds=30))
    )
    version = events[0].data["version"]
    assert (await agent_row(database, ana)).load == 25
    await database.run_write(lambda s: claim.decline(s, cid, ana, now=now, reason="expired"))
    conv = await conversation_row(database, cid)
    assert (conv.offered_to, conv.declined_by, conv.enqueued_at is not None) == (None, [ana], True)
    assert (await agent_row(database, ana)).load == 0
    with pytest.raises(Refused) as refused:
        await database.run_write(lambda s: claim.accept(s, cid, ana, version=version, now=now))
    assert refused.value.error == "stale_offer"
    events = await database.run_write(
        lambda s: claim.offer(s, cid, ben, costs=COSTS, now=now, expires_at=now + timedelta(seconds=30))
    )
    with pytest.raises(Refused):  # an old version of the offer
        await database.run_write(lambda s: claim.accept(s, cid, ben, version=version, now=now))
    events = await database.run_write(
        lambda s: claim.accept(s, cid, ben, version=events[0].data["version"], now=now)
    )
    assert events[0].data["reason"] == "offer_accepted"
    conv = await conversation_row(database, cid)
    assert (conv.assignee_id, conv.assigned_cost, conv.declined_by) == (ben, 25, [])
    assert (await agent_row(database, ben)).load == 25


async def test_transfer_to_a_queue_unassigns_and_enqueues(database: Database) -> None:
    ana = await add_agent(database)
    cid = await add_conversation(database, queue="general")
    now = utcnow()
    await database.run_write(lambda s: claim.assign(s, cid, ana, costs=COSTS, now=now, reason="r"))
    events = await database.run_write(
        lambda s: claim.unassign(s, cid, now=now, reason="transfer", by=ana, to_queue="billing")
    )
    assert [e.type for e in events] == [EventType.CONVERSATION_ASSIGNED, EventType.CONVERSATION_QUEUED]
    assert events[1].data["queue"] == "billing"
    conv = await conversation_row(database, cid)
    assert (conv.assignee_id, conv.queue, conv.assigned_cost) == (None, "billing", 0)
    assert (await agent_row(database, ana)).load == 0
