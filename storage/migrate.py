"""Apply Alembic migrations from inside the running event loop (shares the writer connection)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from storage.engine import Database

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _upgrade(sync_conn: Any, cfg: Config) -> None:
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


def _current(sync_conn: Any) -> str | None:
    return MigrationContext.configure(sync_conn).get_current_revision()


async def upgrade(db: Database) -> tuple[str | None, str]:
    """Bring the schema to the newest revision; returns (before, after)."""
    cfg = alembic_config()
    head = ScriptDirectory.from_config(cfg).get_current_head() or ""
    async with db.writer.connect() as conn:
        before = await conn.run_sync(_current)
        if before != head:
            await conn.run_sync(_upgrade, cfg)
            await conn.commit()
    return before, head
