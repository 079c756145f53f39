"""Bulk writes for the ingest hot path, straight to the driver's ``executemany``.

SQLAlchemy's Core executemany spends more Python per row (parameter construction, one bind
processor call per value) than SQLite spends storing the row; ingest writes a few rows per message,
so that was most of its time. Here the SQL is built once per table and column list, and values are
converted with the same rules as :class:`storage.models.UTCDateTime` and JSON columns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import JSON, Table
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Base, UTCDateTime


@cache
def _statement(
    table: Table, columns: tuple[str, ...], dialect: str, paramstyle: str
) -> tuple[str, tuple[Any, ...]]:
    names = ", ".join(columns)
    if paramstyle == "qmark":
        marks = ", ".join("?" for _ in columns)
    else:  # numeric_dollar (asyncpg)
        marks = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    converters = tuple(_converter(table.c[name].type, dialect) for name in columns)
    return f"INSERT INTO {table.name} ({names}) VALUES ({marks})", converters


def _sqlite_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _json(value: Any) -> str:
    return json.dumps(value)


def _converter(kind: Any, dialect: str) -> Any:
    if isinstance(kind, UTCDateTime):
        return _sqlite_time if dialect == "sqlite" else None
    if isinstance(kind, JSON):
        return _json
    return None


async def insert_rows(session: AsyncSession, model: type[Base], rows: Sequence[dict[str, Any]]) -> None:
    """INSERT every row (all with the same keys, ids included) in one executemany."""
    if not rows:
        return
    conn = await session.connection()
    dialect = conn.dialect
    table: Table = model.__table__  # type: ignore[assignment]
    columns = tuple(rows[0])
    sql, converters = _statement(table, columns, dialect.name, dialect.paramstyle)
    pairs = list(zip(columns, converters, strict=True))
    params = [tuple(row[c] if f is None else f(row[c]) for c, f in pairs) for row in rows]
    await conn.exec_driver_sql(sql, params)
