"""The web-chat channel through real sockets: /webchat/session and the visitor websocket.

Covers the wire protocol of the issue (history, ack after commit, idempotent client ids, replies,
typing both ways), what a visitor may see (only their own messages, never a private note), bad
frames, and identity verification. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from aiohttp import WSMsgType, WSServerHandshakeError
from sqlalchemy import select

from channels.webchat.tokens import TokenSigner
from hub.app import server_secret
from hub.model import Role
from storage.models import Conversation, Event, Message
from tests.clients import (
    count_rows,
    event_of,
    new_visitor,
    next_frame,
    of_type,
    open_live,
    visitor_conversation,
    webchat_session,
)
from tests.conftest import Live, MakeAgent

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(1)>"


async def stored_message(live: Live, message_id: int) -> Message | None:
    async with live.hub.db.read() as s:
        return await s.get(Message, message_id)


async def reply(live: Live, headers: dict[str, str], conversation_id: int, text: str) -> dict[str, Any]:
    async with live.http.post(
        f"{live.base}/api/conversations/{conversation_id}/messages", json={"text": text}, headers=headers
    ) as r:
        assert r.status == 202, await r.text()
        return dict((await r.json())["message"])


# -- the happy path -------------------------------------------------------------------------------


async def test_history_then_ack_only_after_commit(live: Live) -> None:
    visitor = await new_visitor(live, name="Ada")
    assert visitor.history == []
    ack = await visitor.send("Hello there", client_id="first")
    assert ack == {"type": "ack", "client_id": "first", "message_id": ack["message_id"]}
    # Read through a fresh transaction at once: the ack promises the row is committed.
    row = await stored_message(live, ack["message_id"])
    assert row is not None
    assert (row.text, row.direction, row.external_id) == ("Hello there", "in", f"{visitor.visitor_id}:first")

    again = await visitor.reconnect()
    assert [(m["message_id"], m["direction"], m["text"]) for m in again.history] == [
        (ack["message_id"], "in", "Hello there")
    ]
    assert again.history[0]["author"] == "Ada" and again.history[0]["at"]


async def test_same_client_id_twice_is_stored_once_and_acked_twice(live: Live) -> None:
    visitor = await new_visitor(live)
    first = await visitor.send("only once", client_id="dup")
    second = await visitor.send("only once", client_id="dup")
    assert first["type"] == second["type"] == "ack"
    assert first["message_id"] == second["message_id"]
    assert await count_rows(live.hub, Message) == 1


async def test_concurrent_duplicates_from_two_sockets_store_one_row(live: Live) -> None:
    one = await new_visitor(live)
    two = await one.reconnect()
    frame = {"type": "message", "client_id": "raced", "text": "sent from two tabs"}
    await asyncio.gather(one.ws.send_json(frame), two.ws.send_json(frame))
    acks = await asyncio.gather(*(next_frame(v.ws, of_type("ack")) for v in (one, two)))
    assert acks[0]["message_id"] == acks[1]["message_id"]
    assert await count_rows(live.hub, Message) == 1


@asynccontextmanager
async def write_path_held(live: Live) -> AsyncIterator[None]:
    """Make commits of new messages wait: another connection holds the lock they need."""
    if live.hub.db.is_sqlite:
        # SQLite has one writer; BEGIN IMMEDIATE takes the write lock until we roll back.
        path = live.hub.db.url.split(":///", 1)[1]
        raw = sqlite3.connect(path, isolation_level=None)
        raw.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            raw.execute("ROLLBACK")
            raw.close()
        return
    # PostgreSQL: EXCLUSIVE conflicts with the ROW EXCLUSIVE lock an INSERT into messages needs.
    conn = await asyncpg.connect(live.hub.db.url.replace("+asyncpg", ""))
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("LOCK TABLE messages IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            await tx.rollback()
    finally:
        await conn.close()


async def test_no_ack_while_the_commit_cannot_happen(live: Live) -> None:
    visitor = await new_visitor(live)
    async with write_path_held(live):
        await visitor.ws.send_json({"type": "message", "client_id": "held", "text": "wait for it"})
        ack = asyncio.ensure_future(next_frame(visitor.ws, of_type("ack")))
        done, _ = await asyncio.wait({ack}, timeout=0.7)
        assert not done, "acknowledged before the message could be committed"
        assert await count_rows(live.hub, Message) == 0
    frame = await ack
    assert frame["client_id"] == "held"
    assert await stored_message(live, frame["message_id"]) is not None


async def test_agent_reply_reaches_the_visitor(live: Live, make_agent: MakeAgent) -> None:
    agent = await make_agent(Role.AGENT, name="Grace")
    visitor, conversation_id = await visitor_conversation(live)
    sent = await reply(live, agent.headers, conversation_id, "How can I help?")
    frame = await next_frame(visitor.ws, of_type("message"))
    assert frame["message_id"] == sent["id"]
    assert (frame["direction"], frame["text"], frame["author"]) == ("out", "How can I help?", "Grace")
    history = (await visitor.reconnect()).history
    assert [m["direction"] for m in history] == ["in", "out"]


async def test_typing_both_ways(live: Live, make_agent: MakeAgent) -> None:
    agent = await make_agent(Role.AGENT)
    visitor, conversation_id = await visitor_conversation(live)
    agent_ws = await open_live(live, agent.headers)

    await visitor.ws.send_json({"type": "typing"})
    seen = await next_frame(agent_ws, of_type("typing"))
    assert seen["conversation_id"] == conversation_id

    await agent_ws.send_json({"type": "typing", "conversation_id": conversation_id})
    assert await next_frame(visitor.ws, of_type("typing")) == {"type": "typing"}
    await agent_ws.close()


async def test_private_note_never_reaches_the_visitor(live: Live, make_agent: MakeAgent) -> None:
    agent = await make_agent(Role.AGENT)
    visitor, conversation_id = await visitor_conversation(live)
    async with live.http.post(
        f"{live.base}/api/conversations/{conversation_id}/notes",
        json={"text": "secret: VIP customer"},
        headers=agent.headers,
    ) as r:
        assert r.status == 201
    await reply(live, agent.headers, conversation_id, "public answer")
    # Frames keep order: had the note been pushed, it would come before the reply.
    first = await next_frame(visitor.ws, lambda f: f["type"] != "typing")
    assert first["type"] == "message" and first["text"] == "public answer"
    history = (await visitor.reconnect()).history
    assert "secret: VIP customer" not in json.dumps(history)
    assert [m["text"] for m in history] == ["Hello, I need help", "public answer"]


async def test_hostile_text_is_stored_and_returned_verbatim(live: Live, make_agent: MakeAgent) -> None:
    agent = await make_agent(Role.SUPERVISOR)
    visitor = await new_visitor(live, name=HOSTILE)
    other_tab = await visitor.reconnect()
    ack = await visitor.send(HOSTILE)
    assert ack["type"] == "ack"
    row = await stored_message(live, ack["message_id"])
    assert row is not None and row.text == HOSTILE and row.author_name == HOSTILE

    echo = await next_frame(other_tab.ws, of_type("message"))
    assert echo["text"] == HOSTILE and echo["author"] == HOSTILE
    assert (await visitor.reconnect()).history[0]["text"] == HOSTILE
    async with live.http.get(
        f"{live.base}/api/conversations/{row.conversation_id}", headers=agent.headers
    ) as r:
        assert r.content_type == "application/json"
        body = await r.json()
    assert body["messages"][0]["text"] == HOSTILE
    assert body["conversation"]["contact"]["name"] == HOSTILE


# -- bad frames ---------------------------------------------------------------------------------

LIMIT = 5000  # the channel's default max_message_chars

BAD_FRAMES: list[tuple[str, Any, str]] = [
    ("empty text", {"type": "message", "client_id": "e1", "text": ""}, "empty_message"),
    ("blank text", {"type": "message", "client_id": "e2", "text": " \n\t "}, "empty_message"),
    (
        "text over the limit",
        {"type": "message", "client_id": "e3", "text": "x" * (LIMIT + 1)},
        "message_too_long",
    ),
    ("text not a string", {"type": "message", "client_id": "e4", "text": 42}, "empty_message"),
    ("text missing", {"type": "message", "client_id": "e5"}, "empty_message"),
    ("client_id missing", {"type": "message", "text": "hi"}, "invalid_client_id"),
    ("client_id empty", {"type": "message", "client_id": "", "text": "hi"}, "invalid_client_id"),
    ("client_id not a string", {"type": "message", "client_id": 7, "text": "hi"}, "invalid_client_id"),
    ("client_id too long", {"type": "message", "client_id": "c" * 101, "text": "hi"}, "invalid_client_id"),
    ("malformed JSON", '{"type": "message", ', "invalid_json"),
    ("JSON array", "[1, 2, 3]", "invalid_json"),
    ("JSON string", '"message"', "invalid_json"),
    (
        "unpaired surrogate in text",
        '{"type": "message", "client_id": "s", "text": "a \\ud800"}',
        "invalid_json",
    ),
    (
        "unpaired surrogate in client_id",
        '{"type": "message", "client_id": "\\udfff", "text": "a"}',
        "invalid_json",
    ),
    ("nested past the parser's recursion", "[" * 50_000, "invalid_json"),
    ("unknown frame type", {"type": "shout", "text": "hi"}, "unknown_frame"),
    ("no frame type", {"text": "hi"}, "unknown_frame"),
    ("binary frame", b'{"type": "message", "client_id": "b", "text": "hi"}', "binary_frame"),
]


async def test_bad_frames_get_error_frames_and_the_socket_stays_usable(live: Live) -> None:
    visitor = await new_visitor(live)
    for name, frame, error in BAD_FRAMES:
        if isinstance(frame, bytes):
            await visitor.ws.send_bytes(frame)
        elif isinstance(frame, str):
            await visitor.ws.send_str(frame)
        else:
            await visitor.ws.send_json(frame)
        answer = await next_frame(visitor.ws)
        assert answer["type"] == "error" and answer["error"] == error, name
        assert answer["detail"], name
        await visitor.ws.send_json({"type": "ping"})
        assert await next_frame(visitor.ws) == {"type": "pong"}, name
    assert await count_rows(live.hub, Message) == 0
    ack = await visitor.send("x" * LIMIT)  # exactly at the limit is fine
    assert ack["type"] == "ack"
    assert await count_rows(live.hub, Message) == 1


async def test_a_bad_message_does_not_fail_other_visitors_messages(live: Live) -> None:
    """Ingest commits concurrent messages together; text no database can store must be stopped at
    the edge, or it fails the whole batch and innocent visitors are told their message was refused."""
    hostile, innocent = await new_visitor(live), await new_visitor(live)
    await asyncio.gather(
        hostile.ws.send_str('{"type": "message", "client_id": "x", "text": "\\ud83d broken emoji"}'),
        innocent.ws.send_json({"type": "message", "client_id": "y", "text": "just asking"}),
    )
    assert (await next_frame(hostile.ws))["error"] == "invalid_json"
    ack = await next_frame(innocent.ws)
    assert ack["type"] == "ack", ack
    assert await count_rows(live.hub, Message) == 1


async def test_invalid_utf8_closes_with_1007_and_the_hub_keeps_serving(live: Live) -> None:
    visitor = await new_visitor(live)
    await visitor.ws.send_frame(b'{"type": "message", "text": "\xff\xfe"}', WSMsgType.TEXT)
    closing = await visitor.ws.receive(timeout=5)
    assert closing.type is WSMsgType.CLOSE
    assert closing.data == 1007
    assert await count_rows(live.hub, Message) == 0

    other = await new_visitor(live)
    assert (await other.send("still here"))["type"] == "ack"
    async with live.http.get(f"{live.base}/healthz") as r:
        assert r.status == 200


async def test_oversized_frame_closes_with_1009(live: Live) -> None:
    visitor = await new_visitor(live)
    await visitor.ws.send_json({"type": "message", "client_id": "big", "text": "x" * 70_000})
    closing = await visitor.ws.receive(timeout=5)
    assert closing.type is WSMsgType.CLOSE and closing.data == 1009
    assert await count_rows(live.hub, Message) == 0


# -- tokens, sessions and isolation between visitors ----------------------------------------------


def tampered(token: str) -> str:
    version, payload, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    return f"{version}.{payload}.{flipped}"


def with_other_payload(token: str, visitor_id: str) -> str:
    """The payload of another visitor under this token's signature."""
    version, _payload, signature = token.split(".")
    body = json.dumps({"vid": visitor_id, "exp": 2**40, "ver": False}, separators=(",", ":")).encode()
    return f"{version}.{base64.urlsafe_b64encode(body).rstrip(b'=').decode()}.{signature}"


async def test_forged_expired_and_tampered_tokens_are_refused(live: Live) -> None:
    good = (await webchat_session(live))["token"]
    victim = await new_visitor(live)
    secret = server_secret(live.hub.config.data_dir)
    tokens = {
        "missing": "",
        "garbage": "not-a-token",
        "tampered signature": tampered(good),
        "another visitor's id under my signature": with_other_payload(good, victim.visitor_id),
        "signed with another secret": TokenSigner(b"not the hub secret", 3600).issue(
            victim.visitor_id, name=None, email=None, verified=False
        ),
        "expired": TokenSigner(secret, -60).issue(victim.visitor_id, name=None, email=None, verified=False),
        "wrong version": "v2" + good[2:],
    }
    for name, token in tokens.items():
        async with live.http.get(f"{live.base}/webchat/ws", params={"token": token}) as r:
            assert r.status == 401, name
            body = await r.json()
            assert body["error"] == "invalid_token" and body["detail"], name
        with pytest.raises(WSServerHandshakeError) as refused:
            await live.http.ws_connect(f"{live.ws_base}/webchat/ws", params={"token": token})
        assert refused.value.status == 401, name


async def test_a_visitor_sees_only_their_own_conversation(live: Live, make_agent: MakeAgent) -> None:
    agent = await make_agent(Role.AGENT)
    alice, alice_conversation = await visitor_conversation(live, "alice's question")
    bob, bob_conversation = await visitor_conversation(live, "bob's question")
    assert alice_conversation != bob_conversation

    await reply(live, agent.headers, alice_conversation, "for alice only")
    await reply(live, agent.headers, bob_conversation, "for bob")
    first = await next_frame(bob.ws, of_type("message"))
    assert first["text"] == "for bob"

    history = (await bob.reconnect()).history
    assert [m["text"] for m in history] == ["bob's question", "for bob"]
    # A visitor token is not an agent session.
    async with live.http.get(
        f"{live.base}/api/conversations/{alice_conversation}",
        headers={"Authorization": f"Bearer {bob.token}"},
    ) as r:
        assert r.status == 401
    assert (await alice.reconnect()).history[-1]["text"] == "for alice only"


def user_hash(user_id: str, secret: str = "site-identity-secret") -> str:
    return hmac.new(secret.encode(), user_id.encode(), hashlib.sha256).hexdigest()


async def test_verified_identity_gives_the_same_visitor_on_every_session(live: Live) -> None:
    fields = {"user_id": "customer-42@example.com", "user_hash": user_hash("customer-42@example.com")}
    first = await new_visitor(live, **fields)
    ack = await first.send("from my laptop")
    second = await new_visitor(live, **{**fields, "user_hash": fields["user_hash"].upper()})
    assert second.visitor_id == first.visitor_id
    assert [m["message_id"] for m in second.history] == [ack["message_id"]]


@pytest.mark.parametrize(
    "fields",
    [
        {"user_id": "customer-42", "user_hash": user_hash("customer-43")},
        {"user_id": "customer-42", "user_hash": user_hash("customer-42", "another secret")},
        {"user_id": "customer-42", "user_hash": ""},
        {"user_id": "customer-42"},
        {"user_hash": user_hash("customer-42")},
    ],
    ids=["hash of another user", "hash with another secret", "empty hash", "no hash", "no user id"],
)
async def test_invalid_identity_is_refused(live: Live, fields: dict[str, str]) -> None:
    async with live.http.post(f"{live.base}/webchat/session", json=fields) as r:
        assert r.status == 403
        assert (await r.json())["error"] == "invalid_user_hash"


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{", 400, "invalid_json"),
        (b"[]", 400, "invalid_json"),
        (b'"name"', 400, "invalid_json"),
        (b'{"name": "\xff"}', 400, "invalid_json"),
        (b'{"name": 5}', 422, "invalid_field"),
        (b'{"email": ["a@example.com"]}', 422, "invalid_field"),
        (b'{"name": "\\ud800"}', 400, "invalid_json"),
        (b"[" * 100_000, 400, "invalid_json"),
        (json.dumps({"name": "n" * 321}).encode(), 422, "invalid_field"),
    ],
    ids=[
        "malformed",
        "array",
        "string",
        "invalid utf-8",
        "number name",
        "list email",
        "unpaired surrogate",
        "deep nesting",
        "long name",
    ],
)
async def test_bad_session_requests(live: Live, body: bytes, status: int, error: str) -> None:
    async with live.http.post(
        f"{live.base}/webchat/session", data=body, headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == status
        assert (await r.json())["error"] == error


async def test_new_message_reopens_a_resolved_conversation(live: Live, make_agent: MakeAgent) -> None:
    agent = await make_agent(Role.SUPERVISOR)
    visitor, conversation_id = await visitor_conversation(live)
    async with live.http.patch(
        f"{live.base}/api/conversations/{conversation_id}", json={"status": "resolved"}, headers=agent.headers
    ) as r:
        assert r.status == 200
        assert (await r.json())["conversation"]["status"] == "resolved"
    watcher = await open_live(live, agent.headers)

    ack = await visitor.send("one more thing")
    assert ack["type"] == "ack"
    reopened = await next_frame(
        watcher, event_of("conversation.status_changed", conversation_id=conversation_id)
    )
    assert reopened["event"]["data"]["previous"] == "resolved"
    assert reopened["event"]["data"]["status"] == "open"
    async with live.hub.db.read() as s:
        conv = await s.get(Conversation, conversation_id)
        assert conv is not None and conv.status == "open" and conv.resolved_at is None
        assert (
            await s.execute(select(Message.conversation_id).where(Message.id == ack["message_id"]))
        ).scalar_one() == conversation_id
    assert await count_rows(live.hub, Conversation) == 1
    assert await count_rows(live.hub, Event, Event.type == "conversation.status_changed") == 2
    await watcher.close()


async def test_a_refused_token_is_readable_from_the_embedding_site(live: Live) -> None:
    """The widget on another site must be able to read the 401 to start a new session."""
    headers = {"Origin": "https://shop.example"}
    async with live.http.get(f"{live.base}/webchat/ws", params={"token": "expired"}, headers=headers) as r:
        assert r.status == 401
        assert r.headers["Access-Control-Allow-Origin"] == "https://shop.example"
