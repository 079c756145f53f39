"""Where long-lived receivers stopped (an IMAP mailbox's UIDVALIDITY and highest committed UID, ...).

A channel saves its cursor only after what it points past is committed, so a restart resumes without
losing anything; it lives in the database so it moves with the receiver from one node to another.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from hub.model import utcnow
from storage.engine import Database
from storage.ids import allocate_ids
from storage.models import ChannelCursor


class Cursors:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def load(self, channel: str, key: str) -> str | None:
        async with self.db.read() as s:
            return (
                await s.execute(
                    select(ChannelCursor.value).where(
                        ChannelCursor.channel == channel, ChannelCursor.key == key
                    )
                )
            ).scalar_one_or_none()

    async def save(self, channel: str, key: str, value: str) -> None:
        """Create or move the cursor (one statement: safe when two processes race)."""
        insert: Any = sqlite_insert if self.db.is_sqlite else pg_insert
        now = utcnow()
        async with self.db.write() as s:
            (new_id,) = await s.run_sync(lambda session: allocate_ids(session, ChannelCursor, 1))
            statement = insert(ChannelCursor).values(
                id=new_id, channel=channel, key=key, value=value, updated_at=now
            )
            await s.execute(
                statement.on_conflict_do_update(
                    index_elements=["channel", "key"], set_={"value": value, "updated_at": now}
                )
            )
