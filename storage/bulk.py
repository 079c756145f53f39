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
from functools import cache, lru_cache
from typing import Any

from sqlalchemy import JSON, Table
from sqlalchemy.orm import Session

from storage.models import Base, UTCDateTime


@cache
def _statement(
    table: Table, verb: str, columns: tuple[str, ...], keys: tuple[str, ...], dialect: str, paramstyle: str
) -> tuple[str, tuple[Any, ...]]:
    def mark(i: int) -> str:
        return "?" if paramstyle == "qmark" else f"${i}"  # else numeric_dollar (asyncpg)

    if verb == "insert":
        marks = ", ".join(mark(i) for i in range(1, len(columns) + 1))
        sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})"
    else:
        sets = ", ".join(f"{c} = {mark(i)}" for i, c in enumerate(columns, 1))
        where = " AND ".join(f"{k} = {mark(i)}" for i, k in enumerate(keys, len(columns) + 1))
        sql = f"UPDATE {table.name} SET {sets} WHERE {where}"
    converters = tuple(_converter(table.c[name].type, dialect) for name in columns + keys)
    return sql, converters


@lru_cache(maxsize=4096)  # a batch stamps many rows with the same instant
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


def insert_rows(session: Session, model: type[Base], rows: Sequence[dict[str, Any]]) -> None:
    """INSERT every row (all with the same keys) in one executemany."""
    if rows:
        _executemany(session, model, "insert", tuple(rows[0]), (), rows)


def update_rows(session: Session, model: type[Base], key: str, rows: Sequence[dict[str, Any]]) -> None:
    """UPDATE ... WHERE ``key`` = row[key] for every row (all with the same keys) in one executemany."""
    if rows:
        _executemany(session, model, "update", tuple(c for c in rows[0] if c != key), (key,), rows)


def _executemany(
    session: Session,
    model: type[Base],
    verb: str,
    columns: tuple[str, ...],
    keys: tuple[str, ...],
    rows: Sequence[dict[str, Any]],
) -> None:
    conn = session.connection()
    dialect = conn.dialect
    table: Table = model.__table__  # type: ignore[assignment]
    sql, converters = _statement(table, verb, columns, keys, dialect.name, dialect.paramstyle)
    pairs = list(zip(columns + keys, converters, strict=True))
    params = [tuple(row[c] if f is None else f(row[c]) for c, f in pairs) for row in rows]
    conn.exec_driver_sql(sql, params)
