"""Routing in the inbox, driven in headless Chromium: the supervisor view, the status selector,
offers and transfers.

Each test runs a hub on a loopback socket and opens one browser context per person. Real flows go
through the hub's routing API; what the page must do with events the router sends (an offer that
expires, a queue snapshot) is produced on the hub's event bus, or on the page's own socket when
the router's snapshots would race the test's.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from hub.app import Hub
from hub.events import new_event
from hub.model import Role, utcnow
from tests.clients import call, customer_says
from tests.conftest import AgentLogin, Live, MakeAgent, hub_config
from tests.web.conftest import BROWSER, WAIT_MS, sign_in

pytestmark = BROWSER
playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright package is not installed")
Browser = playwright_api.Browser
BrowserContext = playwright_api.BrowserContext
Locator = playwright_api.Locator
Page = playwright_api.Page
Route = playwright_api.Route
WebSocketRoute = playwright_api.WebSocketRoute
expect = playwright_api.expect

MARKUP = '<img src=x onerror="window.__pwned=1">'


@dataclass
class Inboxes:
    """Inbox pages, one browser context per person; an error thrown in any page fails the test."""

    browser: Browser
    live: Live
    errors: list[str] = field(default_factory=list)
    contexts: list[BrowserContext] = field(default_factory=list)

    async def page(self, who: AgentLogin) -> Page:
        context = await self.browser.new_context(viewport={"width": 1400, "height": 900})
        context.set_default_timeout(WAIT_MS)  # clicks too fail in seconds, not at the test's timeout
        self.contexts.append(context)
        page = await context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(f"{who.email}: {exc}"))
        return page

    async def open(self, who: AgentLogin) -> Page:
        page = await self.page(who)
        await sign_in(page, self.live.base, who)
        return page


@pytest.fixture
async def hub(tmp_path: Path, db_url: str) -> AsyncIterator[Hub]:
    """These tests watch the router at work: it runs here."""
    async with Hub(hub_config(tmp_path, db_url, routing_enabled=True)) as running:
        yield running


@pytest.fixture
async def inboxes(live: Live, browser: Browser) -> AsyncIterator[Inboxes]:
    opened = Inboxes(browser, live)
    try:
        yield opened
    finally:
        for context in opened.contexts:
            await context.close()
    assert not opened.errors, opened.errors


async def api(live: Live, method: str, path: str, who: AgentLogin, body: Any = None) -> Any:
    status, answer = await call(live, method, path, who.headers, json=body)
    assert status < 300, f"{method} {path}: {status} {answer}"
    return answer


def publish(live: Live, type: str, **fields: Any) -> None:
    """An event as the router would send it, straight onto the hub's bus (live only, not stored)."""
    live.hub.bus.publish([new_event(type, **fields)])


async def stay_away(live: Live, who: AgentLogin) -> None:
    """Status away, so the router assigns nothing to this agent while a test offers by hand."""
    await api(live, "PUT", "/api/agents/me/status", who, {"status": "away"})


async def new_conversation(live: Live, visitor: str, text: str = "Hello, I need help") -> int:
    return (await customer_says(live.hub, visitor, text)).conversation_id


def queue_row(page: Page, name: str) -> Locator:
    return page.locator(f"[data-testid='queue-row'][data-queue='{name}']")


def agent_row(page: Page, agent_id: int) -> Locator:
    return page.locator(f"[data-testid='agent-row'][data-agent-id='{agent_id}']")


def agents_conversation(row: Locator, conversation_id: int) -> Locator:
    return row.locator(f"[data-testid='agent-conversation'][data-conversation-id='{conversation_id}']")


async def open_supervisor_view(page: Page) -> None:
    await page.get_by_test_id("supervisor-tab").click()
    await expect(page.get_by_test_id("supervisor-view")).to_be_visible()
    await expect(page).to_have_url(re.compile("#/supervisor$"))
    await expect(page.get_by_test_id("conversation-list")).to_be_hidden()


async def transfer_to(page: Page, target: str) -> Locator:
    """In the open transfer dialog, pick ``target`` ("agent:<id>" or "queue:<name>") and submit."""
    dialog = page.get_by_test_id("transfer-dialog")
    await expect(dialog.get_by_test_id("transfer-target")).to_be_enabled()
    await dialog.get_by_test_id("transfer-target").select_option(target)
    await dialog.get_by_test_id("transfer-submit").click()
    return dialog


# -- the supervisor view ------------------------------------------------------------------------


async def test_a_supervisor_sees_the_supervisor_view_and_an_agent_does_not(
    live: Live, make_agent: MakeAgent, inboxes: Inboxes
) -> None:
    admin = await make_agent(Role.ADMIN, name="Ada Admin")
    boss = await make_agent(Role.SUPERVISOR, name="Sue Supervisor")
    agent = await make_agent(Role.AGENT, name="Ann Agent")
    await api(live, "PUT", "/api/queues/support", admin, {"sla_seconds": 60})

    supervisor_page = await inboxes.open(boss)
    await open_supervisor_view(supervisor_page)
    await expect(supervisor_page.get_by_test_id("supervisor-notice")).to_be_hidden()
    queue = queue_row(supervisor_page, "support")
    await expect(queue).to_contain_text("support")
    await expect(queue.get_by_test_id("queue-waiting")).to_have_text(re.compile(r"^0"))
    await expect(agent_row(supervisor_page, agent.id)).to_contain_text("Ann Agent")
    await expect(agent_row(supervisor_page, boss.id).get_by_test_id("agent-presence")).to_have_attribute(
        "data-presence", "online"
    )

    # Back to the inbox through its tab; the supervisor route survives a reload.
    await supervisor_page.get_by_test_id("inbox-tab").click()
    await expect(supervisor_page.get_by_test_id("conversation-list")).to_be_visible()
    await expect(supervisor_page.get_by_test_id("supervisor-view")).to_be_hidden()
    await supervisor_page.goto(f"{live.base}/#/supervisor")
    await expect(supervisor_page.get_by_test_id("queues-table")).to_be_visible()

    agent_page = await inboxes.open(agent)
    await expect(agent_page.get_by_test_id("supervisor-tab")).to_be_hidden()
    await agent_page.goto(f"{live.base}/#/supervisor")
    await expect(agent_page.get_by_test_id("conversation-list")).to_be_visible()
    await expect(agent_page.get_by_test_id("supervisor-view")).to_be_hidden()


async def test_live_snapshots_fill_the_tables_and_waits_tick(
    live: Live, make_agent: MakeAgent, inboxes: Inboxes
) -> None:
    boss = await make_agent(Role.SUPERVISOR, name="Sue Supervisor")
    page = await inboxes.page(boss)
    sockets: list[WebSocketRoute] = []

    async def only_our_snapshots(ws: WebSocketRoute) -> None:
        """Pass the hub's frames through, except its own snapshots, which would replace ours."""
        server = ws.connect_to_server()

        def from_server(message: str | bytes) -> None:
            frame = json.loads(message)
            if (frame.get("event") or {}).get("type") not in ("queues.updated", "agents.updated"):
                ws.send(message)

        server.on_message(from_server)
        sockets.append(ws)

    await page.route_web_socket(re.compile(r"/api/live$"), only_our_snapshots)
    await sign_in(page, live.base, boss)
    await open_supervisor_view(page)
    await expect(page.get_by_test_id("supervisor-updated")).to_contain_text("Updated")

    def snapshot(kind: str, data: dict[str, Any]) -> None:
        event = {"id": None, "type": kind, "at": utcnow().isoformat(), "conversation_id": None, "data": data}
        sockets[-1].send(json.dumps({"type": "event", "event": event}))

    snapshot(
        "queues.updated",
        {
            "service_level_rule": "answered within the queue's target; abandoned count as missed",
            "queues": [
                {
                    "name": "vip",
                    "priority": 2,
                    "sla_seconds": 30,
                    "waiting": 3,
                    "waiting_by_priority": {"0": 1, "2": 2},
                    "offered": 1,
                    "longest_wait_seconds": 95,
                    "eligible_agents": 4,
                    "available_agents": 0,
                    "service_level": {
                        "rolling_15m": 0.5,
                        "today": 0.875,
                        "answered": 8,
                        "answered_within_sla": 7,
                        "abandoned": 1,
                    },
                    "average_speed_of_answer_seconds": 12.4,
                    "wait_p50_seconds": 8,
                    "wait_p90_seconds": 41,
                    "abandoned_today": 1,
                    "answered_today": 8,
                    "sla_at_risk": True,
                    "sla_breached_now": 2,
                },
                {
                    "name": "quiet",
                    "priority": 0,
                    "sla_seconds": 60,
                    "waiting": 0,
                    "longest_wait_seconds": None,
                    "service_level": {"rolling_15m": None, "today": None},
                    "sla_at_risk": False,
                    "sla_breached_now": 0,
                },
            ],
        },
    )
    vip = queue_row(page, "vip")
    await expect(vip).to_have_attribute("data-at-risk", "true")
    await expect(vip.get_by_test_id("queue-breached")).to_have_text("2 over target")
    await expect(vip.get_by_test_id("queue-sl-15m")).to_have_text("50%")
    await expect(vip.get_by_test_id("queue-sl-today")).to_have_text("88%")
    await expect(vip.get_by_test_id("queue-asa")).to_have_text("12s")
    await expect(vip.get_by_test_id("queue-abandoned")).to_have_text("1")
    await expect(vip.get_by_test_id("queue-agents")).to_have_text("0 / 4")
    await expect(vip.get_by_test_id("queue-waiting")).to_contain_text("P2: 2")
    longest = vip.get_by_test_id("queue-longest-wait")
    await expect(longest).to_have_text(re.compile(r"^1m 3[5-9]s$"))
    await expect(longest).to_have_class(re.compile("over-target"))
    await expect(longest).not_to_have_text(await longest.text_content() or "")  # it ticks
    quiet = queue_row(page, "quiet")
    await expect(quiet).to_have_attribute("data-at-risk", "false")
    await expect(quiet.get_by_test_id("queue-sl-15m")).to_have_text("—")
    await expect(quiet.get_by_test_id("queue-longest-wait")).to_have_text("—")
    await expect(page.get_by_test_id("service-level-rule")).to_contain_text("abandoned count as missed")

    snapshot(
        "agents.updated",
        {
            "agents": [
                {
                    "id": 9001,
                    "name": f"Zed {MARKUP}",
                    "email": "zed@example.com",
                    "role": "agent",
                    "status": "online",
                    "presence": "away",
                    "connected": True,
                    "capacity": 100,
                    "load": 60,
                    "load_by_channel": {"webchat": 50, "email": 10},
                    "conversations": [
                        {
                            "id": 4242,
                            "channel_kind": "webchat",
                            "status": "open",
                            "cost": 25,
                            "assigned_at": None,
                        },
                        {"id": 4343, "channel_kind": "email", "status": "open", "cost": 10, "offered": True},
                    ],
                    "active_conversations": 2,
                    "offers": 1,
                    "skills": {"billing": 4},
                    "channel_kinds": ["webchat", "email"],
                    "last_assigned_at": None,
                    "seconds_since_last_assignment": 61,
                }
            ]
        },
    )
    zed = agent_row(page, 9001)
    await expect(zed).to_contain_text(f"Zed {MARKUP}")
    await expect(zed).to_contain_text("chose online")
    await expect(zed.get_by_test_id("agent-presence")).to_have_attribute("data-presence", "away")
    await expect(zed.get_by_test_id("agent-load")).to_contain_text("60 / 100")
    segments = zed.locator(".load-seg")
    await expect(segments).to_have_count(2)
    assert await segments.evaluate_all("s => s.map(e => e.style.width)") == ["50%", "10%"]
    await expect(zed.get_by_test_id("agent-conversation")).to_have_count(2)
    await expect(zed.locator("a[href='#/conversations/4242']")).to_be_visible()
    await expect(zed).to_contain_text("billing 4")
    await expect(zed.get_by_test_id("agent-last-assignment")).to_have_text(re.compile(r"^1m 0[1-9]s ago$"))
    await expect(page.locator("img")).to_have_count(0)
    assert await page.evaluate("typeof window.__pwned") == "undefined"


async def test_a_supervisor_transfers_a_conversation_and_sees_refusals(
    live: Live, make_agent: MakeAgent, inboxes: Inboxes
) -> None:
    boss = await make_agent(Role.SUPERVISOR, name="Sue Supervisor")
    ann = await make_agent(Role.AGENT, name="Ann Agent")
    ben = await make_agent(Role.AGENT, name="Ben Agent")
    conversation_id = await new_conversation(live, "visitor-transfer", "Where is my refund?")
    await api(live, "PATCH", f"/api/conversations/{conversation_id}", boss, {"assignee_id": ann.id})

    page = await inboxes.open(boss)
    await open_supervisor_view(page)

    held = agents_conversation(agent_row(page, ann.id), conversation_id)
    await held.get_by_test_id("agent-conversation-transfer").click()
    dialog = await transfer_to(page, f"agent:{ben.id}")
    await expect(dialog).to_be_hidden()
    await expect(page.get_by_test_id("toast").filter(has_text="Transferred to Ben Agent")).to_be_visible()
    moved = agents_conversation(agent_row(page, ben.id), conversation_id)
    await expect(moved).to_be_visible()
    answer = await api(live, "GET", f"/api/conversations/{conversation_id}", boss)
    assert answer["conversation"]["assignee_id"] == ben.id

    # The server's refusal is shown in the dialog, which stays open for another choice.
    detail = "Ann Agent has no room for this conversation (100 of 100 in use)"

    async def refuse(route: Route) -> None:
        await route.fulfill(status=409, json={"error": "no_capacity", "detail": detail})

    await page.route("**/api/conversations/*/transfer", refuse)
    await moved.get_by_test_id("agent-conversation-transfer").click()
    await transfer_to(page, f"agent:{ann.id}")
    await expect(dialog.get_by_test_id("transfer-error")).to_have_text(detail)
    await expect(dialog).to_be_visible()
    await dialog.get_by_test_id("transfer-cancel").click()
    await expect(dialog).to_be_hidden()

    # The conversation's link opens it in the inbox, with the transfer control there too.
    await moved.get_by_role("link").click()
    await expect(page).to_have_url(re.compile(f"#/conversations/{conversation_id}$"))
    await expect(page.get_by_test_id("supervisor-view")).to_be_hidden()
    await expect(page.get_by_test_id("timeline")).to_contain_text("Where is my refund?")
    await expect(page.get_by_test_id("assignee-select")).to_have_value(str(ben.id))
    await expect(page.get_by_test_id("transfer-button")).to_be_visible()


# -- an agent's own status and offers ----------------------------------------------------------


async def test_an_agent_sets_their_status_from_the_header(
    live: Live, make_agent: MakeAgent, inboxes: Inboxes
) -> None:
    boss = await make_agent(Role.SUPERVISOR, name="Sue Supervisor")
    agent = await make_agent(Role.AGENT, name="Ann Agent")
    page = await inboxes.open(agent)
    select = page.get_by_test_id("presence-select")
    dot = page.get_by_test_id("presence-dot")
    await expect(select).to_have_value("online")
    await expect(dot).to_have_attribute("data-presence", "online")

    await select.select_option("away")
    await expect(dot).to_have_attribute("data-presence", "away")
    await expect(select).to_be_enabled()
    agents = (await api(live, "GET", "/api/agents/overview", boss))["agents"]
    assert [(a["status"], a["presence"]) for a in agents if a["id"] == agent.id] == [("away", "away")]

    await page.reload()
    await expect(page.get_by_test_id("live-state")).to_have_attribute("data-state", "open")
    await expect(select).to_have_value("away")
    await expect(page.get_by_test_id("supervisor-tab")).to_be_hidden()


async def test_an_offer_counts_down_and_goes_when_it_ends(
    live: Live, make_agent: MakeAgent, inboxes: Inboxes
) -> None:
    agent = await make_agent(Role.AGENT, name="Ann Agent")
    other = await make_agent(Role.AGENT, name="Ben Agent")
    await stay_away(live, agent)
    first = await new_conversation(live, "visitor-one", "My card was charged twice")
    second = await new_conversation(live, "visitor-two", "Question about an invoice")
    page = await inboxes.open(agent)
    cards = page.get_by_test_id("offer-card")

    def offer(conversation_id: int, to: AgentLogin, seconds: float, version: int = 1) -> None:
        now = utcnow()
        publish(
            live,
            "conversation.offered",
            at=now,
            conversation_id=conversation_id,
            agent_id=to.id,
            offered_to=to.id,
            version=version,
            expires_at=(now + timedelta(seconds=seconds)).isoformat(),
            queue="billing",
        )

    # Another agent's offer is not shown; this agent's is, with the queue, the contact and a countdown.
    offer(first, other, 30)
    offer(second, agent, 30)
    await expect(cards).to_have_count(1)
    card = cards.first
    await expect(card).to_have_attribute("data-conversation-id", str(second))
    await expect(card.get_by_test_id("offer-queue")).to_have_text("billing")
    await expect(card).to_contain_text("Question about an invoice")
    await expect(card.get_by_test_id("offer-countdown")).to_have_text(re.compile(r"^Expires in (30|2\d)s$"))

    # Declined elsewhere (or timed out on the server): the card goes.
    publish(live, "offer.declined", conversation_id=second, agent_id=agent.id, offered_to=agent.id, version=1)
    await expect(cards).to_have_count(0)

    # An offer runs out in the page too, even if no event says so.
    offer(first, agent, 2, version=2)
    await expect(cards).to_have_count(1)
    await expect(cards.first.get_by_test_id("offer-countdown")).to_have_text(
        re.compile(r"^Expires in [12]s$")
    )
    await expect(cards).to_have_count(0)


async def test_a_stale_accept_shows_the_servers_message(
    live: Live, make_agent: MakeAgent, inboxes: Inboxes
) -> None:
    agent = await make_agent(Role.AGENT, name="Ann Agent")
    await stay_away(live, agent)
    conversation_id = await new_conversation(live, "visitor-stale", "Hello?")
    page = await inboxes.open(agent)
    now = utcnow()
    publish(
        live,
        "conversation.offered",
        at=now,
        conversation_id=conversation_id,
        agent_id=agent.id,
        offered_to=agent.id,
        version=999,  # the router never made this offer, so it has moved on by definition
        expires_at=(now + timedelta(seconds=30)).isoformat(),
        queue="billing",
    )
    card = page.get_by_test_id("offer-card")
    async with page.expect_response(re.compile(rf"/api/conversations/{conversation_id}/accept$")) as answer:
        await card.get_by_test_id("offer-accept").click()
    response = await answer.value
    assert response.status == 409
    refusal = await response.json()
    error = card.get_by_test_id("offer-error")
    await expect(error).to_have_text(refusal["detail"] or refusal["error"].replace("_", " "))
    await expect(error).to_have_attribute("data-error", refusal["error"])
    await expect(card.get_by_test_id("offer-accept")).to_have_count(0)
    await card.get_by_test_id("offer-dismiss").click()
    await expect(card).to_have_count(0)
    await expect(page.get_by_test_id("conversation-view")).to_be_hidden()


async def test_a_routed_offer_is_accepted_and_opens_the_conversation(
    live: Live, make_agent: MakeAgent, inboxes: Inboxes
) -> None:
    admin = await make_agent(Role.ADMIN, name="Ada Admin")
    agent = await make_agent(Role.AGENT, name="Ann Agent")
    ben = await make_agent(Role.AGENT, name="Ben Agent")
    # The default queue, which takes every conversation, offers instead of assigning.
    await api(live, "PUT", "/api/queues/general", admin, {"mode": "offer", "offer_timeout_seconds": 30})
    page = await inboxes.open(agent)
    await expect(page.get_by_test_id("presence-dot")).to_have_attribute("data-presence", "online")

    conversation_id = await new_conversation(live, "visitor-routed", "Can someone help me?")
    card = page.get_by_test_id("offer-card")
    await expect(card).to_have_attribute("data-conversation-id", str(conversation_id))
    await expect(card.get_by_test_id("offer-queue")).to_have_text("general")
    await expect(card.get_by_test_id("offer-countdown")).to_have_text(re.compile(r"^Expires in \d+s$"))
    item = page.get_by_test_id("conversation-item").filter(has_text="Can someone help me?")
    await expect(item).to_contain_text("general")

    # Opened while offered: the header says where it waits and for whom; not theirs to transfer yet.
    await item.click()
    await expect(page.get_by_test_id("conversation-queue")).to_have_text("general")
    await expect(page.get_by_test_id("conversation-offered")).to_have_text("offered to you")
    await expect(page.get_by_test_id("transfer-button")).to_be_hidden()

    await card.get_by_test_id("offer-accept").click()
    await expect(card).to_have_count(0)
    await expect(page).to_have_url(re.compile(f"#/conversations/{conversation_id}$"))
    await expect(page.get_by_test_id("timeline")).to_contain_text("Can someone help me?")
    await expect(page.get_by_test_id("assignee-select")).to_have_value(str(agent.id))
    answer = await api(live, "GET", f"/api/conversations/{conversation_id}", admin)
    assert answer["conversation"]["assignee_id"] == agent.id

    # The assignee hands it on; it then leaves their inbox.
    await page.get_by_test_id("transfer-button").click()
    await expect(await transfer_to(page, f"agent:{ben.id}")).to_be_hidden()
    await expect(page.get_by_test_id("conversation-view")).to_be_hidden()
    await expect(item).to_have_count(0)
    answer = await api(live, "GET", f"/api/conversations/{conversation_id}", admin)
    assert answer["conversation"]["assignee_id"] == ben.id
