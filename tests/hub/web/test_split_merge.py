"""Splitting a message off into a new conversation and merging one conversation into another,
through the REST API on a real socket, on SQLite and PostgreSQL: what moves, what is recorded,
what is refused, who may do it, the capacity a merged conversation gives back, and that later
replies still thread to a moved message."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from hub.app import Hub
from hub.model import (
    Attachment,
    Direction,
    IdentityKind,
    InboundMessage,
    IngestResult,
    MessageStatus,
    Role,
    ThreadHints,
    utcnow,
)
from hub.outbox import OutboxStatus
from storage.models import Agent, Event, Message, OutboxRow
from tests.clients import call
from tests.conftest import AgentLogin, Live, MakeAgent

_ids = itertools.count(1)


async def says(
    hub: Hub,
    visitor: str,
    text: str = "hello",
    *,
    subject: str | None = None,
    in_reply_to: str | None = None,
    strict: bool = False,
    attachments: tuple[Attachment, ...] = (),
) -> IngestResult:
    """A customer message through the hub's ingest, as a channel hands it over."""
    return await hub.ingest(
        InboundMessage(
            channel="webchat",
            channel_kind="webchat",
            external_id=f"{visitor}:s{next(_ids)}",
            identity_kind=IdentityKind.WEBCHAT,
            sender=visitor,
            text=text,
            attachments=attachments,
            thread=ThreadHints(subject=subject, in_reply_to=in_reply_to, strict=strict),
        )
    )


async def external_id(hub: Hub, message_id: int) -> str:
    async with hub.db.read() as s:
        value = (await s.execute(select(Message.external_id).where(Message.id == message_id))).scalar_one()
    assert value is not None
    return str(value)


async def events_of(hub: Hub, kind: str) -> list[Event]:
    async with hub.db.read() as s:
        return list((await s.execute(select(Event).where(Event.type == kind).order_by(Event.id))).scalars())


async def load_of(hub: Hub, agent_id: int) -> int:
    async with hub.db.read() as s:
        return int((await s.execute(select(Agent.load).where(Agent.id == agent_id))).scalar_one())


async def conversation(live: Live, who: AgentLogin, conversation_id: int) -> dict[str, Any]:
    status, body = await call(live, "GET", f"/api/conversations/{conversation_id}", who.headers)
    assert status == 200, body
    return dict(body)


async def split(live: Live, who: AgentLogin, conversation_id: int, **body: Any) -> tuple[int, Any]:
    return await call(live, "POST", f"/api/conversations/{conversation_id}/split", who.headers, json=body)


async def merge(live: Live, who: AgentLogin, conversation_id: int, into: Any) -> tuple[int, Any]:
    return await call(
        live, "POST", f"/api/conversations/{conversation_id}/merge", who.headers, json={"into": into}
    )


# -- split ----------------------------------------------------------------------------------------


async def test_split_moves_one_message_with_its_attachments_into_a_new_open_conversation(
    live: Live, make_agent: MakeAgent
) -> None:
    agent = await make_agent()
    first = await says(live.hub, "visitor-a", "my invoice is wrong", subject="Invoice")
    second = await says(
        live.hub,
        "visitor-a",
        "also, my password does not work",
        attachments=(Attachment("screen.txt", "text/plain", b"error 42"),),
    )
    third = await says(live.hub, "visitor-a", "about the invoice: it is March")
    original = first.conversation_id
    assert second.conversation_id == third.conversation_id == original

    status, body = await split(live, agent, original, message_id=second.message_id, subject="Password")
    assert status == 201, body
    new = body["conversation"]
    assert new["id"] != original
    assert new["contact"]["id"] == first.contact_id
    assert (new["channel"], new["channel_kind"], new["address"]) == ("webchat", "webchat", "visitor-a")
    assert (new["status"], new["assignee_id"], new["subject"]) == ("open", None, "Password")
    assert new["merged_into_id"] is None
    assert new["last_message"]["text"] == "also, my password does not work"

    moved = await conversation(live, agent, new["id"])
    assert [m["id"] for m in moved["messages"]] == [second.message_id]
    assert [a["filename"] for a in moved["messages"][0]["attachments"]] == ["screen.txt"]
    stays = await conversation(live, agent, original)
    assert [m["id"] for m in stays["messages"]] == [first.message_id, third.message_id]
    assert stays["conversation"]["subject"] == "Invoice"

    created = [e for e in await events_of(live.hub, "conversation.created") if e.conversation_id == new["id"]]
    assert len(created) == 1 and created[0].agent_id == agent.id
    (split_event,) = await events_of(live.hub, "conversation.split")
    assert split_event.conversation_id == new["id"]
    assert split_event.message_id == second.message_id
    assert split_event.agent_id == agent.id
    assert split_event.data["from"] == original
    assert split_event.data["to"] == new["id"]
    assert split_event.data["message_id"] == second.message_id


async def test_split_of_an_agent_reply_keeps_the_original_subject_by_default(
    live: Live, make_agent: MakeAgent
) -> None:
    agent = await make_agent()
    first = await says(live.hub, "visitor-b", "hello", subject="Delivery")
    status, reply = await call(
        live,
        "POST",
        f"/api/conversations/{first.conversation_id}/messages",
        agent.headers,
        json={"text": "hi"},
    )
    assert status == 202, reply
    status, body = await split(live, agent, first.conversation_id, message_id=reply["message"]["id"])
    assert status == 201, body
    assert body["conversation"]["subject"] == "Delivery"
    moved = await conversation(live, agent, body["conversation"]["id"])
    assert [(m["id"], m["direction"]) for m in moved["messages"]] == [(reply["message"]["id"], "out")]


async def test_split_refusals_are_json_and_change_nothing(live: Live, make_agent: MakeAgent) -> None:
    agent = await make_agent()
    lone = await says(live.hub, "visitor-c", "only one")
    first = await says(live.hub, "visitor-d", "one")
    await says(live.hub, "visitor-d", "two")
    status, note = await call(
        live, "POST", f"/api/conversations/{first.conversation_id}/notes", agent.headers, json={"text": "n"}
    )
    assert status == 201
    # A conversation holding one message and a note: the message is still its only message.
    await call(
        live, "POST", f"/api/conversations/{lone.conversation_id}/notes", agent.headers, json={"text": "n"}
    )
    cases: list[tuple[int, dict[str, Any], int, str]] = [
        (lone.conversation_id, {"message_id": lone.message_id}, 409, "only_message"),
        (first.conversation_id, {"message_id": note["message"]["id"]}, 422, "invalid_message"),
        (first.conversation_id, {"message_id": lone.message_id}, 422, "not_in_conversation"),
        (first.conversation_id, {"message_id": 10**12}, 404, "not_found"),
        (10**12, {"message_id": first.message_id}, 404, "not_found"),
        (first.conversation_id, {"message_id": "1"}, 422, "invalid_message"),
        (first.conversation_id, {"message_id": 2**63}, 422, "invalid_message"),
        (first.conversation_id, {}, 422, "invalid_message"),
        (first.conversation_id, {"message_id": first.message_id, "subject": " "}, 422, "invalid_subject"),
        (
            first.conversation_id,
            {"message_id": first.message_id, "subject": "x" * 501},
            422,
            "invalid_subject",
        ),
        (first.conversation_id, {"message_id": first.message_id, "into": 1}, 422, "unknown_field"),
    ]
    for conversation_id, body, want_status, want_error in cases:
        status, answer = await split(live, agent, conversation_id, **body)
        assert (status, answer["error"]) == (want_status, want_error), (body, answer)
        assert answer["detail"]
    assert await events_of(live.hub, "conversation.split") == []
    assert len(await events_of(live.hub, "conversation.created")) == 2


# -- merge ----------------------------------------------------------------------------------------


async def test_merge_moves_every_message_resolves_the_source_and_hides_it(
    live: Live, make_agent: MakeAgent
) -> None:
    agent = await make_agent()
    # Two customers: merging across contacts is allowed, as in Front and Zammad.
    a1 = await says(live.hub, "visitor-e", "first of e")
    b1 = await says(live.hub, "visitor-f", "first of f")
    a2 = await says(live.hub, "visitor-e", "second of e")
    source, target = a1.conversation_id, b1.conversation_id
    assert a2.conversation_id == source

    status, body = await merge(live, agent, source, target)
    assert status == 200, body
    merged = body["conversation"]
    assert merged["id"] == target and merged["merged_into_id"] is None
    assert merged["last_message"]["text"] == "second of e"

    into = await conversation(live, agent, target)
    assert [m["id"] for m in into["messages"]] == [a1.message_id, b1.message_id, a2.message_id]
    assert into["conversation"]["last_message_at"] == into["messages"][-1]["created_at"]
    # Each message keeps its author: the contacts' timelines stay true.
    assert [m["contact_id"] for m in into["messages"]] == [a1.contact_id, b1.contact_id, a1.contact_id]
    gone = await conversation(live, agent, source)
    assert gone["messages"] == []
    assert (gone["conversation"]["status"], gone["conversation"]["merged_into_id"]) == ("resolved", target)

    status, listed = await call(live, "GET", "/api/conversations?status=all", agent.headers)
    assert status == 200 and [c["id"] for c in listed["conversations"]] == [target]
    status, listed = await call(
        live, "GET", "/api/conversations?status=all&include_merged=true", agent.headers
    )
    assert status == 200 and {c["id"] for c in listed["conversations"]} == {source, target}
    status, bad = await call(live, "GET", "/api/conversations?include_merged=yes", agent.headers)
    assert (status, bad["error"]) == (400, "invalid_parameter")

    recorded = await events_of(live.hub, "conversation.merged")
    assert sorted(e.conversation_id for e in recorded if e.conversation_id is not None) == sorted(
        [source, target]
    )
    for event in recorded:
        assert (event.data["from"], event.data["into"], event.agent_id) == (source, target, agent.id)
    (resolved,) = [
        e for e in await events_of(live.hub, "conversation.status_changed") if e.conversation_id == source
    ]
    assert (resolved.data["status"], resolved.data["reason"]) == ("resolved", "merged")


async def test_merge_refusals_are_json_and_change_nothing(live: Live, make_agent: MakeAgent) -> None:
    agent = await make_agent()
    a = (await says(live.hub, "visitor-g", "g")).conversation_id
    b = (await says(live.hub, "visitor-h", "h")).conversation_id
    c = (await says(live.hub, "visitor-i", "i")).conversation_id
    cases: list[tuple[int, Any, int, str]] = [
        (a, a, 422, "merge_into_itself"),
        (a, "2", 422, "invalid_target"),
        (a, None, 422, "invalid_target"),
        (a, 2**63, 422, "invalid_target"),
        (a, 10**12, 404, "not_found"),
        (10**12, a, 404, "not_found"),
    ]
    for source, into, want_status, want_error in cases:
        status, answer = await merge(live, agent, source, into)
        assert (status, answer["error"]) == (want_status, want_error), (source, into, answer)
        assert answer["detail"]
    assert await events_of(live.hub, "conversation.merged") == []

    assert (await merge(live, agent, a, b))[0] == 200
    status, answer = await merge(live, agent, c, a)
    assert (status, answer["error"]) == (409, "already_merged")
    assert f"merged into conversation {b}" in answer["detail"]
    status, answer = await merge(live, agent, a, c)
    assert (status, answer["error"]) == (409, "already_merged")
    assert f"merged into conversation {b}" in answer["detail"]
    status, answer = await call(
        live, "POST", f"/api/conversations/{a}/merge", agent.headers, json={"into": b, "x": 1}
    )
    assert (status, answer["error"]) == (422, "unknown_field")
    assert len(await events_of(live.hub, "conversation.merged")) == 2


async def test_merge_gives_the_assignees_capacity_back(live: Live, make_agent: MakeAgent) -> None:
    agent = await make_agent()
    source = (await says(live.hub, "visitor-j", "j")).conversation_id
    target = (await says(live.hub, "visitor-k", "k")).conversation_id
    status, body = await call(
        live, "PATCH", f"/api/conversations/{source}", agent.headers, json={"assignee_id": agent.id}
    )
    assert status == 200 and body["conversation"]["assignee_id"] == agent.id
    assert await load_of(live.hub, agent.id) > 0

    status, body = await merge(live, agent, source, target)
    assert status == 200, body
    assert await load_of(live.hub, agent.id) == 0
    gone = await conversation(live, agent, source)
    assert gone["conversation"]["status"] == "resolved"
    assert gone["conversation"]["assignee_id"] == agent.id  # who handled it stays on the record


async def test_merge_refuses_while_a_reply_to_another_customer_is_still_queued(
    live: Live, make_agent: MakeAgent
) -> None:
    agent = await make_agent(Role.SUPERVISOR)
    a = await says(live.hub, "visitor-l", "l")
    b = await says(live.hub, "visitor-m", "m")
    now = utcnow()
    async with live.hub.db.write() as s:
        reply = Message(
            conversation_id=a.conversation_id,
            contact_id=a.contact_id,
            channel="webchat",
            external_id=None,
            direction=Direction.OUT.value,
            status=MessageStatus.QUEUED.value,
            agent_id=agent.id,
            sender=None,
            author_name=agent.name,
            text="on its way",
            html=None,
            error=None,
            meta={},
            created_at=now,
        )
        s.add(reply)
        await s.flush()
        # Not due for an hour: the dispatcher leaves it alone during the test.
        s.add(
            OutboxRow(
                message_id=reply.id,
                channel="webchat",
                status=OutboxStatus.PENDING,
                attempts=0,
                next_attempt_at=now + timedelta(hours=1),
                created_at=now,
                updated_at=now,
            )
        )
    status, answer = await merge(live, agent, a.conversation_id, b.conversation_id)
    assert (status, answer["error"]) == (409, "reply_in_flight"), answer
    # Once it went out, nothing is addressed through the conversation any more.
    async with live.hub.db.write() as s:
        await s.execute(update(Message).where(Message.id == reply.id).values(status=MessageStatus.SENT.value))
        await s.execute(
            update(OutboxRow).where(OutboxRow.message_id == reply.id).values(status=OutboxStatus.SENT)
        )
    assert (await merge(live, agent, a.conversation_id, b.conversation_id))[0] == 200


# -- who may --------------------------------------------------------------------------------------


async def test_agents_split_and_merge_only_what_they_may_see(live: Live, make_agent: MakeAgent) -> None:
    supervisor = await make_agent(Role.SUPERVISOR)
    alice = await make_agent()
    bob = await make_agent()
    bobs = await says(live.hub, "visitor-n", "for bob")
    await says(live.hub, "visitor-n", "for bob again")
    shared = (await says(live.hub, "visitor-o", "unassigned")).conversation_id
    other = (await says(live.hub, "visitor-p", "also unassigned")).conversation_id
    status, _ = await call(
        live,
        "PATCH",
        f"/api/conversations/{bobs.conversation_id}",
        supervisor.headers,
        json={"assignee_id": bob.id},
    )
    assert status == 200

    # Bob's conversation is invisible to Alice: 404 every way round, as for one that does not exist.
    for status, answer in (
        await merge(live, alice, bobs.conversation_id, shared),
        await merge(live, alice, shared, bobs.conversation_id),
        await split(live, alice, bobs.conversation_id, message_id=bobs.message_id),
        await split(live, alice, shared, message_id=bobs.message_id),
    ):
        assert (status, answer["error"]) == (404, "not_found"), answer
    assert await events_of(live.hub, "conversation.merged") == []

    # Unassigned conversations are visible to every agent; Bob's own is visible to Bob.
    assert (await merge(live, alice, other, shared))[0] == 200
    status, body = await split(live, bob, bobs.conversation_id, message_id=bobs.message_id)
    assert status == 201, body
    # Supervisors may merge anything, Bob's conversation included.
    status, body = await merge(live, supervisor, body["conversation"]["id"], bobs.conversation_id)
    assert status == 200, body
    assert (await call(live, "POST", f"/api/conversations/{shared}/merge", json={"into": 1}))[0] == 401


# -- threading after a move -----------------------------------------------------------------------


async def test_a_reply_to_a_moved_message_lands_in_its_new_conversation(
    live: Live, make_agent: MakeAgent
) -> None:
    agent = await make_agent()
    first = await says(live.hub, "visitor-q", "invoice", subject="Invoice", strict=True)
    second = await says(live.hub, "visitor-q", "password", subject="Invoice", strict=True)
    assert second.conversation_id == first.conversation_id
    status, body = await split(live, agent, first.conversation_id, message_id=second.message_id)
    assert status == 201, body
    new = body["conversation"]["id"]

    answer = await says(
        live.hub,
        "visitor-q",
        "still the password",
        subject="Re: Invoice",
        in_reply_to=await external_id(live.hub, second.message_id),
        strict=True,
    )
    assert answer.conversation_id == new

    # After a merge the thread follows the messages to the target too.
    target = (await says(live.hub, "visitor-r", "someone else")).conversation_id
    assert (await merge(live, agent, new, target))[0] == 200
    later = await says(
        live.hub,
        "visitor-q",
        "and again",
        in_reply_to=await external_id(live.hub, answer.message_id),
        strict=True,
    )
    assert later.conversation_id == target


@pytest.mark.parametrize("role", [Role.AGENT, Role.ADMIN])
async def test_split_then_merge_back_restores_one_conversation(
    live: Live, make_agent: MakeAgent, role: Role
) -> None:
    who = await make_agent(role)
    first = await says(live.hub, "visitor-s", "one")
    second = await says(live.hub, "visitor-s", "two")
    status, body = await split(live, who, first.conversation_id, message_id=second.message_id)
    assert status == 201
    status, body = await merge(live, who, body["conversation"]["id"], first.conversation_id)
    assert status == 200, body
    whole = await conversation(live, who, first.conversation_id)
    assert [m["id"] for m in whole["messages"]] == [first.message_id, second.message_id]
