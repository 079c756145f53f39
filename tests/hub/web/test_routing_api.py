"""Routing through the web app, with the router running: an open inbox makes an agent available and
conversations reach them live; status, transfers, offers, admin settings, and who may see which
queue's unassigned conversations. Real sockets, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from hub.app import Hub
from hub.model import Role
from hub.web.app import make_app
from tests.clients import call, customer_says, next_frame, open_live
from tests.conftest import AgentLogin, Live, hub_config

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def routed(tmp_path: Path, db_url: str) -> AsyncIterator[Live]:
    async with Hub(hub_config(tmp_path, db_url, routing_enabled=True)) as running:
        server = TestServer(make_app(running), host="127.0.0.1")
        await server.start_server()
        async with ClientSession() as http:
            yield Live(running, server, http)
        await server.close()


async def login(live: Live, role: Role = Role.AGENT, name: str = "Ana", **routing: Any) -> AgentLogin:
    email = f"{name.lower()}-{role.value}@example.com"
    who = await live.hub.accounts.add(email, name, role, "correct-horse-battery")
    token, _ = await live.hub.accounts.login(email, "correct-horse-battery")
    if routing:
        await live.hub.router.configure_agent(who.id, routing)
    return AgentLogin(who.id, email, name, role, "correct-horse-battery", token)


async def route_now(live: Live) -> None:
    """One whole routing round from here (the router's own loop may hold the turn for a moment)."""
    for _ in range(500):
        if not (await live.hub.router.run_round()).skipped:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the router never gave this test a turn")


def assigned_to(agent_id: int, conversation_id: int | None = None) -> Any:
    def wanted(frame: dict[str, Any]) -> bool:
        event = frame.get("event", {})
        return (
            event.get("type") == "conversation.assigned"
            and event.get("data", {}).get("assignee_id") == agent_id
            and (conversation_id is None or event.get("conversation_id") == conversation_id)
        )

    return wanted


async def test_an_open_inbox_receives_new_conversations_live(routed: Live) -> None:
    ana = await login(routed)
    ws = await open_live(routed, ana.headers)
    result = await customer_says(routed.hub, "v-1", "my order is late")
    frame = await next_frame(ws, assigned_to(ana.id, result.conversation_id))
    decision = frame["event"]["data"]["decision"]
    assert decision["queue"] == "general" and decision["agent_id"] == ana.id
    status, body = await call(routed, "GET", f"/api/conversations/{result.conversation_id}", ana.headers)
    assert status == 200
    conv = body["conversation"]
    assert (conv["assignee_id"], conv["queue"], conv["enqueued_at"]) == (ana.id, "general", None)
    await ws.close()


async def test_away_agents_get_nothing_and_bad_status_is_refused(routed: Live) -> None:
    ana = await login(routed)
    ws = await open_live(routed, ana.headers)
    status, body = await call(routed, "PUT", "/api/agents/me/status", ana.headers, json={"status": "away"})
    assert (status, body["agent"]["presence"]) == (200, "away")
    status, body = await call(routed, "PUT", "/api/agents/me/status", ana.headers, json={"status": "busy"})
    assert (status, body["error"]) == (422, "invalid_status")
    result = await customer_says(routed.hub, "v-2")
    await route_now(routed)
    status, body = await call(routed, "GET", f"/api/conversations/{result.conversation_id}", ana.headers)
    assert body["conversation"]["assignee_id"] is None
    assert body["conversation"]["queue"] == "general" and body["conversation"]["enqueued_at"]
    status, _ = await call(routed, "PUT", "/api/agents/me/status", ana.headers, json={"status": "online"})
    await next_frame(ws, assigned_to(ana.id, result.conversation_id))
    await ws.close()


async def test_only_admins_set_routing_attributes(routed: Live) -> None:
    admin, ana = await login(routed, Role.ADMIN, "Root"), await login(routed)
    path = f"/api/agents/{ana.id}"
    status, body = await call(routed, "PATCH", path, ana.headers, json={"capacity": 500})
    assert (status, body["error"]) == (403, "forbidden")
    status, body = await call(routed, "PATCH", path, admin.headers, json={"skills": {"billing": 9}})
    assert (status, body["error"]) == (422, "invalid_skills")
    status, body = await call(routed, "PATCH", path, admin.headers, json={"colour": "red"})
    assert (status, body["error"]) == (422, "unknown_field")
    status, body = await call(
        routed,
        "PATCH",
        path,
        admin.headers,
        json={"skills": {"billing": 4}, "capacity": 50, "channel_kinds": ["webchat"]},
    )
    assert status == 200
    assert (body["agent"]["skills"], body["agent"]["capacity"], body["agent"]["channel_kinds"]) == (
        {"billing": 4},
        50,
        ["webchat"],
    )
    ws = await open_live(routed, ana.headers)
    await customer_says(routed.hub, "v-3")
    await next_frame(ws, assigned_to(ana.id))
    status, body = await call(routed, "PATCH", path, admin.headers, json={"capacity": 10})
    assert (status, body["error"]) == (409, "capacity_below_load")
    await ws.close()


async def test_transfers_go_through_the_claim_path(routed: Live) -> None:
    boss = await login(routed, Role.SUPERVISOR, "Boss")
    ana, ben = await login(routed, name="Ana"), await login(routed, name="Ben", capacity=25)
    ana_ws = await open_live(routed, ana.headers)
    first = (await customer_says(routed.hub, "v-4")).conversation_id
    await next_frame(ana_ws, assigned_to(ana.id, first))
    second = (await customer_says(routed.hub, "v-5")).conversation_id
    await next_frame(ana_ws, assigned_to(ana.id, second))
    path = f"/api/conversations/{first}/transfer"
    status, body = await call(routed, "POST", path, ben.headers, json={"agent_id": ben.id})
    assert status in (403, 404)  # Ben neither owns it nor supervises
    status, body = await call(routed, "POST", path, ana.headers, json={"agent_id": ben.id})
    assert status == 200 and body["conversation"] is None  # Ana handed it over and may no longer read it
    status, body = await call(
        routed, "POST", f"/api/conversations/{second}/transfer", boss.headers, json={"agent_id": ben.id}
    )
    assert (status, body["error"]) == (409, "no_capacity")
    assert "Ben is at capacity (25+25 > 25)" in body["detail"]
    status, body = await call(routed, "POST", path, boss.headers, json={"queue": "nowhere"})
    assert (status, body["error"]) == (422, "unknown_queue")
    status, body = await call(
        routed, "POST", path, boss.headers, json={"agent_id": ana.id, "queue": "general"}
    )
    assert (status, body["error"]) == (422, "invalid_transfer")
    status, body = await call(routed, "GET", "/api/agents", boss.headers)
    loads = {a["id"]: (a["load"], a["capacity"]) for a in body["agents"]}
    assert loads[ana.id] == (25, 100) and loads[ben.id] == (25, 25)
    await ana_ws.close()


async def test_offers_are_accepted_with_their_version_only(routed: Live) -> None:
    admin = await login(routed, Role.ADMIN, "Root")
    status, body = await call(
        routed,
        "PUT",
        "/api/queues/general",
        admin.headers,
        json={"mode": "offer", "offer_timeout_seconds": 60},
    )
    assert status == 200 and body["queue"]["mode"] == "offer"
    status, body = await call(routed, "GET", "/api/queues/general", admin.headers)
    assert (status, body["queue"]["mode"], body["queue"]["position"]) == (200, "offer", 0)
    status, body = await call(routed, "PUT", "/api/queues/general", admin.headers, json={"mode": "telepathy"})
    assert (status, body["error"]) == (422, "invalid_queue") and "telepathy" in body["detail"]
    assert (await call(routed, "GET", "/api/queues/nowhere", admin.headers))[0] == 404
    ana = await login(routed)
    ws = await open_live(routed, ana.headers)
    cid = (await customer_says(routed.hub, "v-6")).conversation_id
    offered = await next_frame(ws, lambda f: f.get("event", {}).get("type") == "conversation.offered")
    version = offered["event"]["data"]["version"]
    assert offered["event"]["conversation_id"] == cid and offered["event"]["agent_id"] == ana.id
    path = f"/api/conversations/{cid}/accept"
    status, body = await call(routed, "POST", path, ana.headers, json={"version": version - 1})
    assert (status, body["error"]) == (409, "stale_offer")
    status, body = await call(routed, "POST", path, ana.headers, json={"version": version})
    assert status == 200 and body["conversation"]["assignee_id"] == ana.id
    await ws.close()


async def test_agents_see_unassigned_work_only_of_the_queues_they_serve(routed: Live) -> None:
    admin = await login(routed, Role.ADMIN, "Root")
    status, _ = await call(
        routed,
        "PUT",
        "/api/queues/billing",
        admin.headers,
        json={"required_skills": {"billing": 3}, "match": {"keywords": ["invoice"]}, "position": 0},
    )
    assert status == 200
    biller, other = await login(routed, name="Bill", skills={"billing": 3}), await login(routed, name="Olga")
    await call(routed, "PUT", "/api/agents/me/status", biller.headers, json={"status": "away"})
    cid = (await customer_says(routed.hub, "v-7", "where is my invoice?")).conversation_id
    await route_now(routed)
    status, body = await call(routed, "GET", f"/api/conversations/{cid}", biller.headers)
    assert status == 200 and body["conversation"]["queue"] == "billing"
    status, body = await call(routed, "GET", f"/api/conversations/{cid}", other.headers)
    assert status == 404
    status, body = await call(routed, "GET", "/api/conversations?assignee=none", other.headers)
    assert cid not in [c["id"] for c in body["conversations"]]
    status, body = await call(routed, "GET", f"/api/conversations/{cid}", admin.headers)
    assert status == 200
    # Live, too: Olga's socket skips the billing conversation's next message; Bill's shows it.
    bill_ws, olga_ws = await open_live(routed, biller.headers), await open_live(routed, other.headers)
    await customer_says(routed.hub, "v-7", "the invoice again")
    fresh = (await customer_says(routed.hub, "v-8", "hello")).conversation_id

    def received(frame: dict[str, Any]) -> bool:
        return frame.get("event", {}).get("type") == "message.received"

    assert (await next_frame(bill_ws, received))["event"]["conversation_id"] == cid
    assert (await next_frame(olga_ws, received))["event"]["conversation_id"] == fresh
    await bill_ws.close()
    await olga_ws.close()
