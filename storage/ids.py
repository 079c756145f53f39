"""Primary keys allocated before a bulk insert.

Batched inserts need each new row's id (to link messages to conversations, events to messages).
``INSERT ... RETURNING`` gives them, but on SQLite the order of returned rows is unspecified, so
SQLAlchemy falls back to one statement per row when asked to keep the order; that alone capped ingest
near 1,000 messages/s. Allocating ids first turns every bulk insert into one ``executemany``:

* PostgreSQL: ``nextval`` of the column's sequence, n values in one round trip; safe under any
  concurrency (sequences never hand out a value twice).
* SQLite: ``max(id) + 1 ..``; safe because every write transaction starts with ``BEGIN IMMEDIATE``
  (see ``storage.engine``), so no other writer can insert between the read and the insert.
"""

from __future__ import annotations

from sqlalchemy import Table, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Base


async def allocate_ids(session: AsyncSession, model: type[Base], n: int) -> list[int]:
    if n <= 0:
        return []
    table: Table = model.__table__  # type: ignore[assignment]
    if session.get_bind().dialect.name == "sqlite":
        top = (await session.execute(select(func.coalesce(func.max(table.c.id), 0)))).scalar_one()
        return list(range(top + 1, top + 1 + n))
    rows = await session.execute(
        text("SELECT nextval(pg_get_serial_sequence(:table, 'id')) FROM generate_series(1, :n)"),
        {"table": table.name, "n": n},
    )
    return [r[0] for r in rows]
