"""Receivers' cursors on SQLite and PostgreSQL: absent at first, moved in place, one row per key even
when saves race."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from hub.cursors import Cursors
from storage.engine import Database
from storage.models import ChannelCursor


async def test_a_cursor_is_created_then_moved_in_place(database: Database) -> None:
    cursors = Cursors(database)
    assert await cursors.load("support-mail", "INBOX") is None
    await cursors.save("support-mail", "INBOX", "1700000000:41")
    await cursors.save("support-mail", "INBOX", "1700000000:42")
    await cursors.save("support-mail", "Archive", "1700000001:7")
    assert await cursors.load("support-mail", "INBOX") == "1700000000:42"
    assert await cursors.load("support-mail", "Archive") == "1700000001:7"
    assert await cursors.load("other-mail", "INBOX") is None


async def test_racing_saves_leave_one_row(database: Database) -> None:
    cursors = Cursors(database)
    values = [f"1:{n}" for n in range(20)]
    await asyncio.gather(*(cursors.save("mail", "INBOX", v) for v in values))
    assert await cursors.load("mail", "INBOX") in values
    async with database.read() as s:
        rows = (await s.execute(select(func.count()).select_from(ChannelCursor))).scalar_one()
    assert rows == 1
