"""The REST API of the issue's "Interfaces" section, on a real socket, on SQLite and PostgreSQL:
login, conversation lists and paging, a conversation, writes and their events, contacts and
their cross-channel timeline, the event record, and bad input answered with JSON errors while
nothing is half-stored."""

from __future__ import annotations

from http.cookies import SimpleCookie
from typing import Any

import pytest
from sqlalchemy import select

from hub.model import Role
from storage.models import Conversation, Event, Message, OutboxRow
from tests.clients import (
    call,
    count_rows,
    customer_says,
    event_of,
    next_frame,
    of_type,
    open_live,
    visitor_conversation,
)
from tests.conftest import AgentLogin, Live, MakeAgent

# -- login ----------------------------------------------------------------------------------------


async def test_login_returns_a_token_and_sets_a_strict_httponly_cookie(
    live: Live, make_agent: MakeAgent
) -> None:
    agent = await make_agent(Role.SUPERVISOR, name="Sam")
    async with live.http.post(
        f"{live.base}/api/session", json={"email": agent.email.upper(), "password": agent.password}
    ) as r:
        assert r.status == 200
        body = await r.json()
        cookie = SimpleCookie()
        for header in r.headers.getall("Set-Cookie"):
            cookie.load(header)
    assert body["agent"] == {
        "id": agent.id,
        "email": agent.email,
        "name": "Sam",
        "role": "supervisor",
        "status": "online",  # what the agent chose (online unless they said otherwise)
        "presence": "offline",  # what the router sees: no inbox open yet
    }
    session = cookie["hub_session"]
    assert session.value == body["token"]
    assert session["httponly"] is True
    assert session["samesite"] == "Strict"
    assert session["path"] == "/"
    status, me = await call(live, "GET", "/api/me", {"Authorization": f"Bearer {body['token']}"})
    assert status == 200 and me["agent"]["id"] == agent.id


@pytest.mark.parametrize(
    "credentials",
    [
        {"email": "supervisor1@example.com", "password": "wrong password"},
        {"email": "nobody@example.com", "password": "password-1-long"},
        {"email": "not an email", "password": "password-1-long"},
        {"email": "supervisor1@example.com", "password": ""},
    ],
    ids=["wrong password", "unknown email", "malformed email", "empty password"],
)
async def test_bad_login_is_401_json_without_a_cookie(
    live: Live, make_agent: MakeAgent, credentials: dict[str, str]
) -> None:
    await make_agent(Role.SUPERVISOR)  # supervisor1@example.com / password-1-long
    async with live.http.post(f"{live.base}/api/session", json=credentials) as r:
        assert r.status == 401
        assert await r.json() == {"error": "invalid_credentials", "detail": "wrong email or password"}
        assert "Set-Cookie" not in r.headers


@pytest.mark.parametrize(
    "body",
    [{}, {"email": "a@example.com"}, {"email": ["a@example.com"], "password": "x" * 10}, {"password": 5}],
)
async def test_login_needs_string_fields(live: Live, body: dict[str, Any]) -> None:
    status, answer = await call(live, "POST", "/api/session", json=body)
    assert status == 422 and answer["error"] == "invalid_credentials"


async def test_logout_revokes_the_token(live: Live, make_agent: MakeAgent) -> None:
    agent = await make_agent()
    assert (await call(live, "DELETE", "/api/session", agent.headers))[0] == 204
    status, body = await call(live, "GET", "/api/me", agent.headers)
    assert status == 401 and body["error"] == "unauthenticated"


async def test_healthz(live: Live) -> None:
    status, body = await call(live, "GET", "/healthz")
    assert status == 200
    assert body == {"status": "ok", "database": live.hub.db.dialect}


# -- conversations --------------------------------------------------------------------------------


async def assign(live: Live, boss: AgentLogin, conversation_id: int, assignee_id: int | None) -> None:
    status, body = await call(
        live,
        "PATCH",
        f"/api/conversations/{conversation_id}",
        boss.headers,
        json={"assignee_id": assignee_id},
    )
    assert status == 200, body


async def test_conversation_list_filters(live: Live, make_agent: MakeAgent) -> None:
    boss = await make_agent(Role.SUPERVISOR)
    me = await make_agent(Role.AGENT)
    colleague = await make_agent(Role.AGENT)
    hub = live.hub
    unassigned = (await customer_says(hub, "v-unassigned")).conversation_id
    mine = (await customer_says(hub, "v-mine")).conversation_id
    theirs = (await customer_says(hub, "v-theirs")).conversation_id
    elsewhere = (await customer_says(hub, "v-elsewhere", channel="webchat-2")).conversation_id
    resolved = (await customer_says(hub, "v-resolved")).conversation_id
    await assign(live, boss, mine, me.id)
    await assign(live, boss, theirs, colleague.id)
    status, _ = await call(
        live, "PATCH", f"/api/conversations/{resolved}", boss.headers, json={"status": "resolved"}
    )
    assert status == 200

    async def ids(who: AgentLogin, query: str) -> list[int]:
        status, body = await call(live, "GET", f"/api/conversations?{query}", who.headers)
        assert status == 200, body
        return [c["id"] for c in body["conversations"]]

    newest_first = [elsewhere, theirs, mine, unassigned]
    cases: list[tuple[AgentLogin, str, list[int]]] = [
        (boss, "", newest_first),
        (boss, "status=open", newest_first),
        (boss, "status=resolved", [resolved]),
        (boss, "status=all", [resolved, *newest_first]),
        (boss, "status=pending", []),
        (boss, "assignee=none", [elsewhere, unassigned]),
        (boss, f"assignee={colleague.id}", [theirs]),
        (boss, "assignee=me", []),
        (boss, "channel=webchat-2", [elsewhere]),
        (boss, "channel=webchat&assignee=none", [unassigned]),
        (me, "", [elsewhere, mine, unassigned]),
        (me, "assignee=me", [mine]),
        (me, "assignee=none", [elsewhere, unassigned]),
        (me, f"assignee={colleague.id}", []),
        (colleague, "assignee=me", [theirs]),
    ]
    for who, query, expected in cases:
        assert await ids(who, query) == expected, (who.role, query)

    status, body = await call(live, "GET", "/api/conversations", boss.headers)
    summary = next(c for c in body["conversations"] if c["id"] == theirs)
    assert summary["assignee"] == {"id": colleague.id, "name": colleague.name}
    assert (
        summary["status"] == "open" and summary["channel"] == "webchat" and summary["address"] == "v-theirs"
    )
    assert summary["last_message"]["text"] == "hello" and summary["last_message"]["direction"] == "in"


async def test_conversation_list_pages_with_before(live: Live, make_agent: MakeAgent) -> None:
    boss = await make_agent(Role.SUPERVISOR)
    created = [(await customer_says(live.hub, f"v-page-{i}")).conversation_id for i in range(7)]
    seen: list[int] = []
    query = "limit=3"
    pages = 0
    while True:
        status, body = await call(live, "GET", f"/api/conversations?{query}", boss.headers)
        assert status == 200
        seen += [c["id"] for c in body["conversations"]]
        pages += 1
        if body["next_before"] is None:
            break
        assert body["next_before"] == seen[-1]
        query = f"limit=3&before={body['next_before']}"
    assert pages == 3
    assert seen == list(reversed(created))


async def test_conversation_with_messages_oldest_first(live: Live, make_agent: MakeAgent) -> None:
    agent = await make_agent(Role.AGENT, name="Ann")
    visitor, conversation_id = await visitor_conversation(live, "first", name="Visitor V")
    await visitor.send("second")
    await call(
        live, "POST", f"/api/conversations/{conversation_id}/notes", agent.headers, json={"text": "a note"}
    )
    await call(
        live, "POST", f"/api/conversations/{conversation_id}/messages", agent.headers, json={"text": "reply"}
    )
    status, body = await call(live, "GET", f"/api/conversations/{conversation_id}", agent.headers)
    assert status == 200
    assert body["conversation"]["id"] == conversation_id
    assert body["conversation"]["contact"]["name"] == "Visitor V"
    messages = body["messages"]
    assert [(m["direction"], m["text"]) for m in messages] == [
        ("in", "first"),
        ("in", "second"),
        ("note", "a note"),
        ("out", "reply"),
    ]
    assert [m["id"] for m in messages] == sorted(m["id"] for m in messages)
    assert messages[2]["status"] == "note" and messages[2]["author"] == "Ann"
    assert messages[0]["author"] == "Visitor V" and messages[0]["channel"] == "webchat"


async def test_patch_changes_status_assignee_and_priority_with_events(
    live: Live, make_agent: MakeAgent
) -> None:
    boss = await make_agent(Role.SUPERVISOR)
    agent = await make_agent(Role.AGENT)
    conversation_id = (await customer_says(live.hub, "v-patch")).conversation_id
    path = f"/api/conversations/{conversation_id}"

    status, body = await call(live, "PATCH", path, boss.headers, json={"status": "pending"})
    assert status == 200 and body["conversation"]["status"] == "pending"
    status, body = await call(
        live, "PATCH", path, boss.headers, json={"assignee_id": agent.id, "priority": 3}
    )
    assert status == 200
    assert body["conversation"]["assignee_id"] == agent.id and body["conversation"]["priority"] == 3
    status, body = await call(live, "PATCH", path, agent.headers, json={"status": "resolved"})
    assert status == 200 and body["conversation"]["status"] == "resolved"
    assert body["conversation"]["resolved_at"] is not None

    status, record = await call(live, "GET", "/api/events?limit=1000", boss.headers)
    mine = [e for e in record["events"] if e["conversation_id"] == conversation_id]
    changes = [(e["type"], e["data"].get("previous"), e["data"].get("status")) for e in mine]
    assert ("conversation.status_changed", "open", "pending") in changes
    assert ("conversation.status_changed", "pending", "resolved") in changes
    assigned = next(e for e in mine if e["type"] == "conversation.assigned")
    assert assigned["data"]["assignee_id"] == agent.id and assigned["data"]["previous_assignee_id"] is None
    assert assigned["agent_id"] == boss.id
    priority = next(e for e in mine if e["type"] == "conversation.priority_changed")
    assert priority["data"]["priority"] == 3

    # A PATCH that changes nothing records nothing.
    before = await count_rows(live.hub, Event)
    status, _ = await call(live, "PATCH", path, boss.headers, json={"status": "resolved", "priority": 3})
    assert status == 200 and await count_rows(live.hub, Event) == before


async def test_reply_is_queued_then_sent_to_the_visitor(live: Live, make_agent: MakeAgent) -> None:
    boss = await make_agent(Role.SUPERVISOR)
    visitor, conversation_id = await visitor_conversation(live)
    watcher = await open_live(live, boss.headers)
    status, body = await call(
        live, "POST", f"/api/conversations/{conversation_id}/messages", boss.headers, json={"text": "On it!"}
    )
    assert status == 202
    message = body["message"]
    assert message["status"] == "queued" and message["direction"] == "out" and message["text"] == "On it!"
    assert message["conversation_id"] == conversation_id and isinstance(message["id"], int)

    pushed = await next_frame(visitor.ws, of_type("message"))
    assert (pushed["message_id"], pushed["direction"], pushed["text"]) == (message["id"], "out", "On it!")
    await next_frame(watcher, event_of("message.sent", message_id=message["id"]))
    async with live.hub.db.read() as s:
        row = await s.get(Message, message["id"])
        assert row is not None and row.status in ("sent", "delivered")
        conv = await s.get(Conversation, conversation_id)
        assert conv is not None and conv.assignee_id == boss.id  # replying takes the conversation
    await watcher.close()


async def test_note_is_201_and_recorded(live: Live, make_agent: MakeAgent) -> None:
    agent = await make_agent(Role.AGENT)
    conversation_id = (await customer_says(live.hub, "v-note")).conversation_id
    status, body = await call(
        live, "POST", f"/api/conversations/{conversation_id}/notes", agent.headers, json={"text": "VIP"}
    )
    assert status == 201
    assert body["message"]["direction"] == "note" and body["message"]["status"] == "note"
    assert await count_rows(live.hub, OutboxRow) == 0  # a note is never sent anywhere
    assert await count_rows(live.hub, Event, Event.type == "note.added", Event.agent_id == agent.id) == 1


# -- contacts and their timeline -------------------------------------------------------------------


async def test_contact_and_timeline_across_channels(live: Live, make_agent: MakeAgent) -> None:
    agent = await make_agent(Role.AGENT)
    visitor, chat = await visitor_conversation(live, "on the website")
    await call(live, "POST", f"/api/conversations/{chat}/messages", agent.headers, json={"text": "reply 1"})
    # The same visitor id on a second web-chat channel: the same contact, another conversation.
    other = await customer_says(live.hub, visitor.visitor_id, "on the other site", channel="webchat-2")
    await customer_says(live.hub, visitor.visitor_id, "still there", channel="webchat-2")
    await visitor.send("back on the website")
    assert other.conversation_id != chat

    status, body = await call(live, "GET", f"/api/conversations/{chat}", agent.headers)
    contact_id = body["conversation"]["contact"]["id"]
    assert other.contact_id == contact_id

    status, body = await call(live, "GET", f"/api/contacts/{contact_id}", agent.headers)
    assert status == 200
    contact = body["contact"]
    assert contact["id"] == contact_id
    assert contact["identities"] == [{"kind": "webchat", "value": visitor.visitor_id}]
    assert {c["id"] for c in contact["conversations"]} == {chat, other.conversation_id}

    everything: list[dict[str, Any]] = []
    query = "limit=2"
    while True:
        status, page = await call(live, "GET", f"/api/contacts/{contact_id}/timeline?{query}", agent.headers)
        assert status == 200 and len(page["messages"]) <= 2
        everything += page["messages"]
        if page["next_before"] is None:
            break
        query = f"limit=2&before={page['next_before']}"
    assert [m["text"] for m in everything] == [
        "back on the website",
        "still there",
        "on the other site",
        "reply 1",
        "on the website",
    ]
    assert {m["channel"] for m in everything} == {"webchat", "webchat-2"}
    ids = [m["id"] for m in everything]
    assert ids == sorted(ids, reverse=True)

    status, page = await call(
        live, "GET", f"/api/contacts/{contact_id}/timeline?before={ids[1]}", agent.headers
    )
    assert [m["id"] for m in page["messages"]] == ids[2:]


# -- the event record -----------------------------------------------------------------------------

EVENT_TYPES = {
    "message.received",
    "message.queued",
    "message.sent",
    "conversation.created",
    "conversation.assigned",
    "conversation.status_changed",
    "note.added",
}


async def test_event_record_pages_oldest_first_and_names_what_happened(
    live: Live, make_agent: MakeAgent
) -> None:
    boss = await make_agent(Role.SUPERVISOR)
    agent = await make_agent(Role.AGENT)
    watcher = await open_live(live, boss.headers)
    visitor, conversation_id = await visitor_conversation(live)
    path = f"/api/conversations/{conversation_id}"
    status, body = await call(live, "POST", f"{path}/messages", agent.headers, json={"text": "hi"})
    await next_frame(watcher, event_of("message.sent", message_id=body["message"]["id"]))
    await call(live, "POST", f"{path}/notes", agent.headers, json={"text": "note"})
    await call(live, "PATCH", path, agent.headers, json={"status": "resolved"})
    await visitor.send("reopen please")

    record: list[dict[str, Any]] = []
    after = 0
    while True:
        status, page = await call(live, "GET", f"/api/events?after={after}&limit=4", boss.headers)
        assert status == 200 and len(page["events"]) <= 4
        if not page["events"]:
            assert page["next_after"] == after
            break
        record += page["events"]
        after = page["next_after"]
        assert after == page["events"][-1]["id"]
    ids = [e["id"] for e in record]
    assert ids == sorted(set(ids)) and len(ids) == await count_rows(live.hub, Event)
    for event in record:
        assert set(event) >= {"id", "type", "at", "conversation_id", "data"}
        assert isinstance(event["data"], dict) and event["at"]
    about = {e["type"] for e in record if e["conversation_id"] == conversation_id}
    assert EVENT_TYPES <= about

    # Where each one concerns what it should.
    by_type = {e["type"]: e for e in record if e["conversation_id"] == conversation_id}
    assert by_type["conversation.assigned"]["data"]["assignee_id"] == agent.id  # answering took it
    assert by_type["message.queued"]["agent_id"] == agent.id
    assert by_type["note.added"]["agent_id"] == agent.id
    assert by_type["conversation.status_changed"]["data"]["status"] == "open"  # the latest: reopened
    _, whole = await call(live, "GET", "/api/events?limit=1000", boss.headers)
    assert [e["id"] for e in whole["events"]] == ids
    await watcher.close()


# -- bad input ------------------------------------------------------------------------------------

HUGE = str(2**70)  # a number no id column can hold
JSON = "application/json"

# (method, path, body, content type, status, error); {c} is a conversation, {k} its contact.
BAD_REQUESTS: list[tuple[str, str, bytes, str | None, int, str]] = [
    ("POST", "/api/conversations/{c}/messages", b'{"text": "hi"', JSON, 400, "invalid_json"),
    ("POST", "/api/conversations/{c}/messages", b'["hi"]', JSON, 400, "invalid_json"),
    ("POST", "/api/conversations/{c}/messages", b"", JSON, 400, "invalid_json"),
    (
        "POST",
        "/api/conversations/{c}/messages",
        b'{"text": "hi"}',
        "text/plain",
        415,
        "unsupported_media_type",
    ),
    (
        "POST",
        "/api/conversations/{c}/messages",
        b'{"text": "hi"}',
        "application/x-www-form-urlencoded",
        415,
        "unsupported_media_type",
    ),
    ("POST", "/api/conversations/{c}/messages", b'{"text": "hi"}', None, 415, "unsupported_media_type"),
    ("POST", "/api/conversations/{c}/messages", b'{"text": "caf\xe9"}', JSON, 400, "invalid_utf8"),
    ("POST", "/api/conversations/{c}/messages", b"[" * 100_000, JSON, 400, "invalid_json"),
    ("POST", "/api/conversations/{c}/messages", b'{"text": "\\ud800"}', JSON, 400, "invalid_unicode"),
    ("POST", "/api/conversations/{c}/messages", b"{}", JSON, 400, "invalid_text"),
    ("POST", "/api/conversations/{c}/messages", b'{"text": ""}', JSON, 400, "empty_text"),
    ("POST", "/api/conversations/{c}/messages", b'{"text": " \\n "}', JSON, 400, "empty_text"),
    ("POST", "/api/conversations/{c}/messages", b'{"text": 42}', JSON, 400, "invalid_text"),
    ("POST", "/api/conversations/{c}/messages", b'{"text": ["hi"]}', JSON, 400, "invalid_text"),
    (
        "POST",
        "/api/conversations/{c}/messages",
        b'{"text": "%s"}' % (b"x" * 20_001),
        JSON,
        413,
        "text_too_long",
    ),
    (
        "POST",
        "/api/conversations/{c}/messages",
        b'{"text": "%s"}' % (b"x" * 1_100_000),
        JSON,
        413,
        "text_too_long",  # replies may carry attachments: the body limit is theirs, the text's is its own
    ),
    (
        "POST",
        "/api/conversations/{c}/notes",
        b'{"text": "%s"}' % (b"x" * 1_100_000),
        JSON,
        413,
        "request_entity_too_large",
    ),
    ("POST", "/api/conversations/{c}/notes", b"{", JSON, 400, "invalid_json"),
    ("POST", "/api/conversations/{c}/notes", b'{"text": ""}', JSON, 400, "empty_text"),
    ("POST", "/api/conversations/{c}/notes", b'{"text": "%s"}' % (b"x" * 20_001), JSON, 413, "text_too_long"),
    ("POST", "/api/conversations/{c}/notes", b'{"text": "\xc3\x28"}', JSON, 400, "invalid_utf8"),
    ("PATCH", "/api/conversations/{c}", b"[]", JSON, 400, "invalid_json"),
    ("PATCH", "/api/conversations/{c}", b"{}", JSON, 400, "empty_patch"),
    ("PATCH", "/api/conversations/{c}", b'{"subject": "new"}', JSON, 400, "unknown_field"),
    (
        "PATCH",
        "/api/conversations/{c}",
        b'{"status": "resolved", "colour": "red"}',
        JSON,
        400,
        "unknown_field",
    ),
    ("PATCH", "/api/conversations/{c}", b'{"status": "closed"}', JSON, 400, "invalid_status"),
    ("PATCH", "/api/conversations/{c}", b'{"status": null}', JSON, 400, "invalid_status"),
    ("PATCH", "/api/conversations/{c}", b'{"status": ["resolved"]}', JSON, 400, "invalid_status"),
    ("PATCH", "/api/conversations/{c}", b'{"priority": 9}', JSON, 400, "invalid_priority"),
    ("PATCH", "/api/conversations/{c}", b'{"priority": "3"}', JSON, 400, "invalid_priority"),
    ("PATCH", "/api/conversations/{c}", b'{"priority": true}', JSON, 400, "invalid_priority"),
    ("PATCH", "/api/conversations/{c}", b'{"priority": 2.0}', JSON, 400, "invalid_priority"),
    ("PATCH", "/api/conversations/{c}", b'{"assignee_id": "1"}', JSON, 400, "invalid_assignee"),
    (
        "PATCH",
        "/api/conversations/{c}",
        b'{"assignee_id": %s}' % HUGE.encode(),
        JSON,
        400,
        "invalid_assignee",
    ),
    (
        "PATCH",
        "/api/conversations/{c}",
        b'{"status": "resolved", "assignee_id": 987654}',
        JSON,
        422,
        "unknown_agent",
    ),
    ("GET", "/api/nothing-here", b"", None, 404, "not_found"),
    ("PUT", "/api/conversations/{c}", b'{"status": "resolved"}', JSON, 405, "method_not_allowed"),
    ("GET", "/api/conversations/abc", b"", None, 404, "not_found"),
    ("GET", "/api/conversations/" + HUGE, b"", None, 404, "not_found"),
    ("PATCH", "/api/conversations/" + HUGE, b'{"status": "resolved"}', JSON, 404, "not_found"),
    ("POST", "/api/conversations/1.5/messages", b'{"text": "hi"}', JSON, 404, "not_found"),
    ("GET", "/api/conversations?status=closed", b"", None, 400, "invalid_status"),
    ("GET", "/api/conversations?assignee=bob", b"", None, 400, "invalid_assignee"),
    ("GET", "/api/conversations?assignee=" + HUGE, b"", None, 400, "invalid_assignee"),
    ("GET", "/api/conversations?before=abc", b"", None, 400, "invalid_parameter"),
    ("GET", "/api/conversations?before=" + HUGE, b"", None, 400, "invalid_parameter"),
    ("GET", "/api/conversations?before=987654", b"", None, 400, "invalid_cursor"),
    ("GET", "/api/conversations?limit=ten", b"", None, 400, "invalid_parameter"),
    ("GET", "/api/contacts/x", b"", None, 404, "not_found"),
    ("GET", "/api/contacts/{k}/timeline?before=x", b"", None, 400, "invalid_parameter"),
    ("GET", "/api/contacts/{k}/timeline?limit=" + HUGE, b"", None, 400, "invalid_parameter"),
    ("GET", "/api/contacts/" + HUGE + "/timeline", b"", None, 404, "not_found"),
    ("GET", "/api/events?after=x", b"", None, 400, "invalid_parameter"),
    ("GET", "/api/events?after=" + HUGE, b"", None, 400, "invalid_parameter"),
    ("GET", "/api/attachments/" + HUGE, b"", None, 404, "not_found"),
    ("POST", "/api/agents", b'{"email": "new@example.com", "name": "\\udc80"}', JSON, 400, "invalid_unicode"),
    (
        "POST",
        "/api/session",
        b'{"email": "admin1@example.com", "password": "\\ud800"}',
        JSON,
        400,
        "invalid_unicode",
    ),
    ("POST", "/api/session", b"[" * 100_000, JSON, 400, "invalid_json"),
    ("POST", "/api/agents", b'{"email": "new@example.com"}', JSON, 422, "invalid_agent"),
    ("POST", "/api/agents", b'{"email": "new@example.com", "name": "  "}', JSON, 422, "invalid_agent"),
    (
        "POST",
        "/api/agents",
        b'{"email": "new@example.com", "name": "N", "role": "god"}',
        JSON,
        422,
        "invalid_role",
    ),
    (
        "POST",
        "/api/agents",
        b'{"email": "new@example.com", "name": "N", "password": "short"}',
        JSON,
        400,
        "weak_password",
    ),
    (
        "POST",
        "/api/agents",
        b'{"email": "new@example.com", "name": "N", "password": 12345678}',
        JSON,
        422,
        "invalid_password",
    ),
    ("POST", "/api/agents", b'{"email": "not-an-address", "name": "N"}', JSON, 400, "invalid_email"),
    ("POST", "/api/agents", b'{"email": "admin1@example.com", "name": "Again"}', JSON, 409, "agent_exists"),
]


async def snapshot(live: Live, conversation_id: int) -> tuple[Any, ...]:
    async with live.hub.db.read() as s:
        conv = (await s.execute(select(Conversation).where(Conversation.id == conversation_id))).scalar_one()
        state = (conv.status, conv.assignee_id, conv.priority)
    return (
        state,
        await count_rows(live.hub, Message),
        await count_rows(live.hub, Event),
        await count_rows(live.hub, OutboxRow),
    )


async def test_bad_input_is_a_json_4xx_and_stores_nothing(live: Live, make_agent: MakeAgent) -> None:
    admin = await make_agent(Role.ADMIN)  # admin1@example.com
    first = await customer_says(live.hub, "v-bad-input")
    before = await snapshot(live, first.conversation_id)
    for method, template, body, content_type, status, error in BAD_REQUESTS:
        path = template.format(c=first.conversation_id, k=first.contact_id)
        headers = dict(admin.headers)
        if content_type is not None:
            headers["Content-Type"] = content_type
        got, answer = await call(live, method, path, headers, data=body)
        case = f"{method} {path} {body[:60]!r}"
        assert (got, answer["error"]) == (status, error), f"{case}: {answer}"
        assert isinstance(answer["detail"], str) and answer["detail"], case
        assert set(answer) == {"error", "detail"}, case
        assert await snapshot(live, first.conversation_id) == before, f"{case} changed something"


async def test_live_socket_answers_bad_frames_and_stays_usable(live: Live, make_agent: MakeAgent) -> None:
    agent = await make_agent(Role.AGENT)
    ws = await open_live(live, agent.headers)
    frames: list[tuple[str, str]] = [
        ("not json", "invalid_json"),
        ('{"type": "typing"}', "invalid_frame"),
        ('{"type": "typing", "conversation_id": "1"}', "invalid_frame"),
        (f'{{"type": "typing", "conversation_id": {HUGE}}}', "invalid_frame"),
        ('{"type": "typing", "conversation_id": 987654}', "not_found"),
        ("[" * 15_000, "invalid_json"),
        ('{"type": "dance"}', "unknown_frame"),
        ("[]", "unknown_frame"),
    ]
    for raw, error in frames:
        await ws.send_str(raw)
        answer = await next_frame(ws)
        assert answer["type"] == "error" and answer["error"] == error, raw
        await ws.send_json({"type": "ping"})
        assert await next_frame(ws) == {"type": "pong"}, raw
    await ws.close()
