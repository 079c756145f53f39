"""The agent inbox (/) and the web-chat widget (/chat) driven together in headless Chromium.

Each test runs a hub on a loopback socket with one admin, opens the visitor's page and the agent's
page in separate browser contexts (separate storage, like two people), and checks what each sees.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from hub.model import Role
from tests.conftest import Live, MakeAgent
from tests.web.conftest import BROWSER, sign_in

pytestmark = BROWSER
playwright_api = pytest.importorskip("playwright.async_api", reason="the playwright package is not installed")
Browser = playwright_api.Browser
Locator = playwright_api.Locator
Page = playwright_api.Page
expect = playwright_api.expect

HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>'


@dataclass
class Scene:
    visitor: Page
    agent: Page
    errors: list[str]


@pytest.fixture
async def scene(live: Live, make_agent: MakeAgent, browser: Browser) -> AsyncIterator[Scene]:
    """A logged-in agent on the inbox (live socket open) and a visitor on /chat, panel open."""
    admin = await make_agent(Role.ADMIN, name="Ada Admin")
    errors: list[str] = []

    agent_context = await browser.new_context(viewport={"width": 1400, "height": 900})
    agent = await agent_context.new_page()
    agent.on("pageerror", lambda exc: errors.append(f"inbox: {exc}"))
    await sign_in(agent, live.base, admin)

    visitor_context = await browser.new_context(viewport={"width": 1000, "height": 800})
    visitor = await visitor_context.new_page()
    visitor.on("pageerror", lambda exc: errors.append(f"widget: {exc}"))
    await visitor.goto(f"{live.base}/chat")
    await expect(visitor.get_by_test_id("chat-panel")).to_be_visible()
    await expect(visitor.get_by_test_id("chat-input")).to_be_editable()

    try:
        yield Scene(visitor, agent, errors)
    finally:
        await visitor_context.close()
        await agent_context.close()
    assert not errors, errors


async def visitor_says(visitor: Page, text: str) -> Locator:
    """Send from the widget and wait for the server's ack; returns the visitor's bubble."""
    await visitor.get_by_test_id("chat-input").fill(text)
    await visitor.get_by_test_id("chat-input").press("Enter")
    bubble = visitor.get_by_test_id("chat-message").filter(has_text=text).last
    await expect(bubble).to_have_attribute("data-state", "sent")
    await expect(bubble).to_have_attribute("data-direction", "in")
    await expect(bubble).to_have_attribute("data-message-id", re.compile(r"^\d+$"))
    return bubble


async def open_first_conversation(agent: Page) -> None:
    item = agent.get_by_test_id("conversation-item").first
    await expect(item).to_be_visible()
    await item.click()
    await expect(agent.get_by_test_id("timeline")).to_be_visible()
    await expect(agent.get_by_test_id("contact-panel")).to_contain_text("webchat")


async def agent_writes(agent: Page, text: str, *, note: bool = False) -> Locator:
    await agent.get_by_test_id("composer-mode-note" if note else "composer-mode-reply").click()
    await agent.get_by_test_id("composer").fill(text)
    await agent.get_by_test_id("composer").press("Enter")
    message = agent.get_by_test_id("message").filter(has_text=text).last
    await expect(message).to_have_attribute("data-direction", "note" if note else "out")
    return message


async def type_until_shown(field: Locator, indicator: Locator, seconds: float = 6.0) -> None:
    """Typing signals are rate-limited at both ends, so keep typing until the other side shows one."""
    deadline = time.monotonic() + seconds
    while True:
        await field.press("a")
        try:
            await expect(indicator).to_be_visible(timeout=500)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


async def test_visitor_message_arrives_live_and_the_reply_reaches_the_widget(scene: Scene) -> None:
    visitor, agent = scene.visitor, scene.agent
    await visitor_says(visitor, "Hello, my parcel never arrived.\nOrder 1234.")

    # No reload: the conversation arrives over the inbox's websocket.
    item = agent.get_by_test_id("conversation-item").first
    await expect(item).to_contain_text("my parcel never arrived")
    await expect(item.get_by_test_id("unread-dot")).to_be_visible()
    await open_first_conversation(agent)
    inbound = agent.get_by_test_id("message").filter(has_text="Order 1234")
    await expect(inbound).to_have_attribute("data-direction", "in")
    await expect(agent.get_by_test_id("status-badge")).to_have_text("Open")

    reply = await agent_writes(agent, "Sorry about that! Checking now.")
    await expect(reply.get_by_test_id("delivery-status")).to_have_attribute(
        "data-status", re.compile("^(sent|delivered|read)$")
    )
    answer = visitor.get_by_test_id("chat-message").filter(has_text="Sorry about that! Checking now.")
    await expect(answer).to_have_attribute("data-direction", "out")
    await expect(answer).to_contain_text("Ada Admin")

    # A second visitor message lands in the open conversation live too.
    await visitor_says(visitor, "Thanks!")
    await expect(agent.get_by_test_id("message").filter(has_text="Thanks!")).to_have_attribute(
        "data-direction", "in"
    )


async def test_typing_shows_on_both_sides(scene: Scene) -> None:
    visitor, agent = scene.visitor, scene.agent
    await visitor_says(visitor, "Is anyone there?")
    await open_first_conversation(agent)

    await type_until_shown(agent.get_by_test_id("composer"), visitor.get_by_test_id("chat-typing"))
    await expect(visitor.get_by_test_id("chat-typing")).to_contain_text("Agent is typing")

    await type_until_shown(visitor.get_by_test_id("chat-input"), agent.get_by_test_id("typing-indicator"))
    await expect(agent.get_by_test_id("typing-indicator")).to_contain_text("Customer is typing")


async def test_private_note_stays_in_the_inbox_and_reload_keeps_the_history(scene: Scene) -> None:
    visitor, agent = scene.visitor, scene.agent
    await visitor_says(visitor, "Can I change my address?")
    await open_first_conversation(agent)

    note = await agent_writes(agent, "VIP customer, handle with care", note=True)
    await expect(note).to_contain_text("Private note")
    await agent_writes(agent, "Yes, send us the new one.")

    # The reply was written after the note: once it is in the widget, the note would be there too.
    messages = visitor.get_by_test_id("chat-message")
    await expect(messages.filter(has_text="Yes, send us the new one.")).to_be_visible()
    await expect(messages.filter(has_text="VIP customer")).to_have_count(0)

    await visitor.reload()
    await expect(messages).to_have_count(2)
    await expect(messages.nth(0)).to_contain_text("Can I change my address?")
    await expect(messages.nth(0)).to_have_attribute("data-direction", "in")
    await expect(messages.nth(1)).to_contain_text("Yes, send us the new one.")
    await expect(messages.nth(1)).to_have_attribute("data-direction", "out")
    await expect(messages.filter(has_text="VIP customer")).to_have_count(0)

    await agent.reload()
    await expect(agent.get_by_test_id("message").filter(has_text="VIP customer")).to_have_attribute(
        "data-direction", "note"
    )


async def test_hostile_markup_is_shown_as_text_on_both_pages(scene: Scene) -> None:
    visitor, agent = scene.visitor, scene.agent
    bubble = await visitor_says(visitor, HOSTILE)
    await expect(bubble).to_contain_text(HOSTILE)

    await open_first_conversation(agent)
    shown = agent.get_by_test_id("message").filter(has_text="window.__pwned").first
    await expect(shown).to_contain_text(HOSTILE)
    await expect(agent.get_by_test_id("contact-timeline-item").first).to_contain_text(HOSTILE)
    await expect(agent.get_by_test_id("conversation-item").first).to_contain_text("<img src=x")

    await agent_writes(agent, HOSTILE)
    echoed = visitor.get_by_test_id("chat-message").filter(has_text="window.__pwned")
    await expect(echoed).to_have_count(2)
    await expect(echoed.last).to_have_attribute("data-direction", "out")
    await expect(echoed.last).to_contain_text(HOSTILE)

    await visitor.reload()
    await expect(visitor.get_by_test_id("chat-message")).to_have_count(2)
    for page in (visitor, agent):
        await expect(page.locator("img")).to_have_count(0)
        assert await page.evaluate("typeof window.__pwned") == "undefined"


async def test_resolve_and_reopen(scene: Scene) -> None:
    visitor, agent = scene.visitor, scene.agent
    await visitor_says(visitor, "All sorted, thanks")
    await open_first_conversation(agent)

    await agent.get_by_test_id("resolve-button").click()
    await expect(agent.get_by_test_id("status-badge")).to_have_text("Resolved")
    await expect(agent.get_by_test_id("resolve-button")).to_be_hidden()
    # The default filter shows open conversations only.
    await expect(agent.get_by_test_id("conversation-item")).to_have_count(0)

    await agent.get_by_test_id("reopen-button").click()
    await expect(agent.get_by_test_id("status-badge")).to_have_text("Open")
    await expect(agent.get_by_test_id("conversation-item")).to_have_count(1)
