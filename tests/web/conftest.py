"""Fixtures for the pages driven in headless Chromium: the browser, a SQLite hub, signing in.

Test modules mark themselves with ``BROWSER`` and import Playwright with ``pytest.importorskip``,
so the suite still runs (skipping these) where Chromium or Playwright is missing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import AgentLogin

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
BROWSER = [
    pytest.mark.browser,
    pytest.mark.timeout(30),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"headless browser tests need {CHROMIUM}"),
]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
# How long an expectation waits for the page to get there.
WAIT_MS = 5_000


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """Browser tests exercise the pages, not the storage: SQLite only (overrides the conftest matrix)."""
    return f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    playwright_api = pytest.importorskip(
        "playwright.async_api", reason="the playwright package is not installed"
    )
    playwright_api.expect.set_options(timeout=WAIT_MS)
    async with playwright_api.async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def sign_in(page: Page, base: str, who: AgentLogin) -> None:
    """Open the inbox, sign in through its form, and wait until the live socket is open."""
    from playwright.async_api import expect

    await page.goto(f"{base}/")
    await page.get_by_test_id("login-email").fill(who.email)
    await page.get_by_test_id("login-password").fill(who.password)
    await page.get_by_test_id("login-submit").click()
    await expect(page.get_by_test_id("conversation-list")).to_be_visible()
    await expect(page.get_by_test_id("live-state")).to_have_attribute("data-state", "open")
