"""Least privilege, checked on the server for every request and websocket: no token, a bad
token, each role's rules, the cookie's Origin check, and what the live socket pushes to whom.
Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import WSMsgType, WSServerHandshakeError
from sqlalchemy import update

import hub.web.live
from hub.model import Role
from storage.models import Agent, Event, Message
from tests.clients import (
    call,
    count_rows,
    customer_says,
    event_of,
    next_frame,
    not_routing_noise,
    of_type,
    open_live,
    visitor_conversation,
)
from tests.conftest import AgentLogin, Live, MakeAgent

# Every protected operation; {c} is a conversation, {k} its contact. The body is valid, so that
# only authorization can refuse it.
PROTECTED: list[tuple[str, str, dict[str, Any] | None]] = [
    ("DELETE", "/api/session", None),
    ("GET", "/api/me", None),
    ("GET", "/api/agents", None),
    ("POST", "/api/agents", {"email": "new@example.com", "name": "New"}),
    ("GET", "/api/conversations", None),
    ("GET", "/api/conversations/{c}", None),
    ("PATCH", "/api/conversations/{c}", {"status": "resolved"}),
    ("POST", "/api/conversations/{c}/messages", {"text": "hi"}),
    ("POST", "/api/conversations/{c}/notes", {"text": "hi"}),
    ("GET", "/api/contacts/{k}", None),
    ("GET", "/api/contacts/{k}/timeline", None),
    ("GET", "/api/events", None),
    ("GET", "/api/attachments/1", None),
    ("GET", "/api/live", None),
]

BAD_CREDENTIALS: dict[str, dict[str, str]] = {
    "no token": {},
    "unknown bearer token": {"Authorization": "Bearer not-a-session-token"},
    "empty bearer token": {"Authorization": "Bearer "},
    "basic auth": {"Authorization": "Basic YWRtaW5AZXhhbXBsZS5jb206cGFzc3dvcmQ="},
    "unknown cookie": {"Cookie": "hub_session=not-a-session-token"},
}


async def test_every_protected_endpoint_refuses_without_a_valid_token(live: Live) -> None:
    first = await customer_says(live.hub, "v-anyone")
    before = (await count_rows(live.hub, Message), await count_rows(live.hub, Event))
    for method, template, body in PROTECTED:
        path = template.format(c=first.conversation_id, k=first.contact_id)
        for name, headers in BAD_CREDENTIALS.items():
            if "Cookie" in headers and method not in ("GET", "HEAD"):
                headers = {**headers, "Origin": live.base}  # past the Origin check, so the token decides
            status, answer = await call(live, method, path, headers, json=body)
            assert status == 401, f"{method} {path} with {name}: {status} {answer}"
            assert answer["error"] == "unauthenticated" and answer["detail"], f"{method} {path} {name}"
    assert (await count_rows(live.hub, Message), await count_rows(live.hub, Event)) == before
    assert await count_rows(live.hub, Agent) == 0


@pytest.mark.parametrize("headers", list(BAD_CREDENTIALS.values()), ids=list(BAD_CREDENTIALS))
async def test_live_socket_refuses_without_a_valid_token(live: Live, headers: dict[str, str]) -> None:
    with pytest.raises(WSServerHandshakeError) as refused:
        await live.http.ws_connect(f"{live.ws_base}/api/live", headers={**headers, "Origin": live.base})
    assert refused.value.status == 401
    with pytest.raises(WSServerHandshakeError) as refused:
        await live.http.ws_connect(f"{live.ws_base}/api/live", params={"token": "not-a-session-token"})
    assert refused.value.status == 401


async def test_a_visitor_token_is_not_an_agent_session(live: Live) -> None:
    visitor, conversation_id = await visitor_conversation(live)
    bearer = {"Authorization": f"Bearer {visitor.token}"}
    for method, path in [
        ("GET", f"/api/conversations/{conversation_id}"),
        ("GET", "/api/conversations"),
        ("GET", "/api/me"),
    ]:
        assert (await call(live, method, path, bearer))[0] == 401
    with pytest.raises(WSServerHandshakeError) as refused:
        await live.http.ws_connect(f"{live.ws_base}/api/live", params={"token": visitor.token})
    assert refused.value.status == 401


# -- roles ----------------------------------------------------------------------------------------


@dataclass
class Floor:
    """Three agents, a supervisor and an admin, and conversations owned in every way."""

    me: AgentLogin
    colleague: AgentLogin
    supervisor: AgentLogin
    admin: AgentLogin
    unassigned: int
    mine: int
    theirs: int
    theirs_contact: int


async def floor(live: Live, make_agent: MakeAgent) -> Floor:
    me, colleague = await make_agent(Role.AGENT), await make_agent(Role.AGENT)
    supervisor, admin = await make_agent(Role.SUPERVISOR), await make_agent(Role.ADMIN)
    unassigned = (await customer_says(live.hub, "v-unassigned")).conversation_id
    mine = (await customer_says(live.hub, "v-mine")).conversation_id
    theirs = await customer_says(live.hub, "v-theirs")
    for conversation_id, owner in ((mine, me), (theirs.conversation_id, colleague)):
        status, _ = await call(
            live,
            "PATCH",
            f"/api/conversations/{conversation_id}",
            supervisor.headers,
            json={"assignee_id": owner.id},
        )
        assert status == 200
    return Floor(
        me, colleague, supervisor, admin, unassigned, mine, theirs.conversation_id, theirs.contact_id
    )


async def test_an_agent_cannot_reach_a_colleagues_conversation(live: Live, make_agent: MakeAgent) -> None:
    f = await floor(live, make_agent)
    before = (await count_rows(live.hub, Message), await count_rows(live.hub, Event))
    refused: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", f"/api/conversations/{f.theirs}", None),
        ("PATCH", f"/api/conversations/{f.theirs}", {"status": "resolved"}),
        ("PATCH", f"/api/conversations/{f.theirs}", {"assignee_id": f.me.id}),
        ("PATCH", f"/api/conversations/{f.theirs}", {"assignee_id": None}),
        ("POST", f"/api/conversations/{f.theirs}/messages", {"text": "mine now"}),
        ("POST", f"/api/conversations/{f.theirs}/notes", {"text": "peeking"}),
        ("GET", f"/api/contacts/{f.theirs_contact}", None),
        ("GET", f"/api/contacts/{f.theirs_contact}/timeline", None),
    ]
    for method, path, body in refused:
        status, answer = await call(live, method, path, f.me.headers, json=body)
        # The same answer as for a conversation that does not exist: no probing.
        assert (status, answer["error"]) == (404, "not_found"), f"{method} {path}: {answer}"
    assert (await count_rows(live.hub, Message), await count_rows(live.hub, Event)) == before

    for query in ("", "status=all", "assignee=all", f"assignee={f.colleague.id}", "channel=webchat"):
        _, body = await call(live, "GET", f"/api/conversations?{query}", f.me.headers)
        assert f.theirs not in [c["id"] for c in body["conversations"]], query
    _, body = await call(live, "GET", "/api/conversations", f.me.headers)
    assert {c["id"] for c in body["conversations"]} == {f.unassigned, f.mine}

    # Their own conversation and unassigned ones are open to them; everything is open to a supervisor.
    for conversation_id in (f.mine, f.unassigned):
        assert (await call(live, "GET", f"/api/conversations/{conversation_id}", f.me.headers))[0] == 200
    for who in (f.supervisor, f.admin):
        assert (await call(live, "GET", f"/api/conversations/{f.theirs}", who.headers))[0] == 200
        assert (await call(live, "GET", f"/api/contacts/{f.theirs_contact}/timeline", who.headers))[0] == 200


async def test_who_may_assign_to_whom(live: Live, make_agent: MakeAgent) -> None:
    f = await floor(live, make_agent)
    cases: list[tuple[AgentLogin, int, int | None, int]] = [
        (f.me, f.unassigned, f.colleague.id, 403),  # an agent cannot hand work to someone else
        (f.me, f.mine, f.colleague.id, 403),
        (f.me, f.unassigned, f.me.id, 200),  # but may take it
        (f.me, f.mine, None, 200),  # and give back their own
        (f.supervisor, f.theirs, f.me.id, 200),
        (f.supervisor, f.mine, f.colleague.id, 200),
        (f.admin, f.theirs, None, 200),
    ]
    for who, conversation_id, assignee_id, expected in cases:
        status, answer = await call(
            live,
            "PATCH",
            f"/api/conversations/{conversation_id}",
            who.headers,
            json={"assignee_id": assignee_id},
        )
        assert status == expected, (who.role, conversation_id, assignee_id, answer)
        if expected == 403:
            assert answer["error"] == "forbidden"


@pytest.mark.parametrize(
    ("role", "agents", "events"),
    [(Role.AGENT, 403, 403), (Role.SUPERVISOR, 403, 200), (Role.ADMIN, 201, 200)],
    ids=["agent", "supervisor", "admin"],
)
async def test_role_gates(live: Live, make_agent: MakeAgent, role: Role, agents: int, events: int) -> None:
    who = await make_agent(role)
    status, answer = await call(
        live, "POST", "/api/agents", who.headers, json={"email": "hire@example.com", "name": "Hire"}
    )
    assert status == agents, answer
    if status == 201:
        assert answer["agent"]["role"] == "agent" and len(answer["password"]) >= 8
        login = {"email": "hire@example.com", "password": answer["password"]}
        assert (await call(live, "POST", "/api/session", json=login))[0] == 200
    else:
        assert answer["error"] == "forbidden"
        assert await count_rows(live.hub, Agent, Agent.email == "hire@example.com") == 0
    status, answer = await call(live, "GET", "/api/events", who.headers)
    assert status == events, answer


# -- cookies and Origin ---------------------------------------------------------------------------


async def test_cookie_writes_need_the_hubs_own_origin(live: Live, make_agent: MakeAgent) -> None:
    agent = await make_agent(Role.AGENT)
    conversation_id = (await customer_says(live.hub, "v-cookie")).conversation_id
    cookie = {"Cookie": f"hub_session={agent.token}"}
    note = f"/api/conversations/{conversation_id}/notes"
    conversation = f"/api/conversations/{conversation_id}"

    assert (await call(live, "GET", "/api/me", cookie))[0] == 200  # reads need no Origin
    for origin in (None, "http://evil.example", "null", live.base.replace("127.0.0.1", "localhost")):
        headers = cookie if origin is None else {**cookie, "Origin": origin}
        for method, path, body in (
            ("POST", note, {"text": "csrf"}),
            ("PATCH", conversation, {"status": "resolved"}),
        ):
            status, answer = await call(live, method, path, headers, json=body)
            assert (status, answer["error"]) == (403, "bad_origin"), (origin, method)
    assert await count_rows(live.hub, Message) == 1

    own = {**cookie, "Origin": live.base}
    assert (await call(live, "POST", note, own, json={"text": "from the inbox"}))[0] == 201
    status, answer = await call(live, "PATCH", conversation, own, json={"status": "resolved"})
    assert status == 200 and answer["conversation"]["status"] == "resolved"
    # Bearer clients are not browsers: no Origin needed.
    assert (await call(live, "POST", note, agent.headers, json={"text": "from a script"}))[0] == 201


async def test_cookie_live_socket_needs_the_hubs_own_origin(live: Live, make_agent: MakeAgent) -> None:
    agent = await make_agent(Role.AGENT)
    cookie = {"Cookie": f"hub_session={agent.token}"}
    for headers in (cookie, {**cookie, "Origin": "http://evil.example"}):
        with pytest.raises(WSServerHandshakeError) as refused:
            await live.http.ws_connect(f"{live.ws_base}/api/live", headers=headers)
        assert refused.value.status == 403
    ws = await open_live(live, {**cookie, "Origin": live.base})
    await ws.close()


# -- the live socket ------------------------------------------------------------------------------


async def test_live_socket_pushes_only_what_the_agent_may_see(live: Live, make_agent: MakeAgent) -> None:
    me, colleague = await make_agent(Role.AGENT), await make_agent(Role.AGENT)
    supervisor = await make_agent(Role.SUPERVISOR)
    theirs_visitor, theirs = await visitor_conversation(live, "for the colleague")
    open_visitor, unassigned = await visitor_conversation(live, "for anyone")
    status, _ = await call(
        live, "PATCH", f"/api/conversations/{theirs}", supervisor.headers, json={"assignee_id": colleague.id}
    )
    assert status == 200
    mine_ws, boss_ws = await open_live(live, me.headers), await open_live(live, supervisor.headers)

    # Something happens on the colleague's conversation, then on an unassigned one.
    await theirs_visitor.ws.send_json({"type": "typing"})
    assert (await next_frame(boss_ws, of_type("typing")))["conversation_id"] == theirs
    assert (await theirs_visitor.send("secret order number 1234"))["type"] == "ack"
    received = await next_frame(boss_ws, event_of("message.received"))
    assert received["event"]["conversation_id"] == theirs
    await open_visitor.ws.send_json({"type": "typing"})
    assert (await open_visitor.send("anyone there?"))["type"] == "ack"

    # The agent's socket keeps order, so had it been sent anything about the colleague's
    # conversation, that would come first.
    first = await next_frame(mine_ws)
    assert first == {"type": "typing", "conversation_id": unassigned, "who": "customer"}
    second = await next_frame(mine_ws)
    assert second["type"] == "event" and second["event"]["conversation_id"] == unassigned
    assert second["event"]["type"] == "message.received"

    # Handing the conversation to the agent is news for them; from then on they see it.
    status, _ = await call(
        live, "PATCH", f"/api/conversations/{theirs}", supervisor.headers, json={"assignee_id": me.id}
    )
    assigned = await next_frame(mine_ws)
    assert assigned["event"]["type"] == "conversation.assigned"
    assert assigned["event"]["conversation_id"] == theirs
    await theirs_visitor.send("still waiting")
    assert (await next_frame(mine_ws))["event"]["conversation_id"] == theirs
    await mine_ws.close()
    await boss_ws.close()


async def test_live_socket_closes_when_the_session_is_revoked(live: Live, make_agent: MakeAgent) -> None:
    agent = await make_agent(Role.AGENT)
    ws = await open_live(live, agent.headers)
    await ws.send_json({"type": "ping"})
    assert await next_frame(ws) == {"type": "pong"}
    assert (await call(live, "DELETE", "/api/session", agent.headers))[0] == 204
    await ws.send_json({"type": "ping"})
    closing = await ws.receive(timeout=5)
    assert closing.data == 4401


async def test_live_socket_stops_pushing_to_a_revoked_session(
    live: Live, make_agent: MakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even a client that never sends a frame loses its events once its session is gone."""
    monkeypatch.setattr(hub.web.live, "SESSION_RECHECK_SECONDS", 0.0)
    revoked, deactivated = await make_agent(Role.SUPERVISOR), await make_agent(Role.SUPERVISOR)
    revoked_ws, deactivated_ws = (
        await open_live(live, revoked.headers),
        await open_live(live, deactivated.headers),
    )
    assert (await call(live, "DELETE", "/api/session", revoked.headers))[0] == 204
    async with live.hub.db.write() as s:
        await s.execute(update(Agent).where(Agent.id == deactivated.id).values(active=False))

    await customer_says(live.hub, "v-after-revocation", "private details")
    for ws in (revoked_ws, deactivated_ws):
        closing = await ws.receive(timeout=5)
        while closing.type == WSMsgType.TEXT and not not_routing_noise(closing.json()):
            closing = await ws.receive(timeout=5)  # presence frames pushed before the revocation
        assert (closing.type, closing.data) == (WSMsgType.CLOSE, 4401), closing


async def test_live_socket_follows_a_demotion(
    live: Live, make_agent: MakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub.web.live, "SESSION_RECHECK_SECONDS", 0.0)
    demoted, colleague = await make_agent(Role.SUPERVISOR), await make_agent(Role.AGENT)
    theirs = (await customer_says(live.hub, "v-colleague")).conversation_id
    admin = await make_agent(Role.ADMIN)
    status, _ = await call(
        live, "PATCH", f"/api/conversations/{theirs}", admin.headers, json={"assignee_id": colleague.id}
    )
    assert status == 200
    ws = await open_live(live, demoted.headers)
    async with live.hub.db.write() as s:
        await s.execute(update(Agent).where(Agent.id == demoted.id).values(role=Role.AGENT.value))

    await customer_says(live.hub, "v-colleague", "for the colleague only")
    unassigned = (await customer_says(live.hub, "v-anyone", "for anyone")).conversation_id
    first = await next_frame(ws)
    assert first["event"]["conversation_id"] == unassigned, first
    await ws.close()
