"""The composition root: builds the hub from its configuration and runs its lifecycle.

Only this module knows every part (storage, ingest, outbox, channels, web app); the parts know
each other through the small interfaces of ``hub.types``.
"""

from __future__ import annotations

import logging
import os
import secrets
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import channels.webchat  # noqa: F401 - registers the web-chat channel kind
from channels.base import BaseChannel, channel_class
from hub.attachments import AttachmentStore
from hub.auth import Accounts, generate_password
from hub.config import ConfigError, HubConfig
from hub.conversations import Conversations
from hub.events import EventBus, new_event
from hub.ingest import Ingest, IngestSettings
from hub.model import InboundMessage, IngestResult, Role, TimelineEntry
from hub.outbox import Dispatcher, OutboxSettings
from hub.timeline import Timeline
from storage.engine import Database
from storage.migrate import upgrade

log = logging.getLogger(__name__)


def server_secret(data_dir: Path) -> bytes:
    """The secret that signs visitor tokens: made on first start, kept (0600) in the data dir."""
    path = data_dir / "secret.key"
    if path.exists():
        return path.read_bytes().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(value)
    return value


class Hub:
    """Everything one hub process runs. Use as ``async with Hub(config) as hub``."""

    def __init__(self, config: HubConfig, *, migrate: bool = True, start_channels: bool = True) -> None:
        self.config = config
        self.migrate = migrate
        self.start_channels = start_channels
        self.db = Database(config.effective_database_url)
        self.bus = EventBus()
        self.attachments = AttachmentStore(config.data_dir / "attachments", config.max_attachment_bytes)
        self.accounts = Accounts(self.db, self.bus, timedelta(days=config.session_days))
        self.ingester = Ingest(
            self.db,
            self.bus,
            self.attachments,
            IngestSettings(
                reopen_within=timedelta(hours=config.reopen_within_hours),
                max_text_chars=config.max_message_chars,
                default_region=config.default_region,
            ),
        )
        self.timeline = Timeline(self.db)
        self.channels: dict[str, BaseChannel] = {}
        self.dispatcher = Dispatcher(
            self.db,
            self.bus,
            lambda: self.channels,
            OutboxSettings(
                max_attempts=config.outbox_max_attempts,
                base_delay=config.outbox_base_delay,
                max_delay=config.outbox_max_delay,
                lease=config.outbox_lease,
                poll_interval=config.outbox_poll_interval,
            ),
        )
        self.conversations = Conversations(
            self.db, self.bus, self.dispatcher.wake, max_chars=config.max_message_chars
        )
        secret = server_secret(config.data_dir)
        for spec in config.channels:
            settings: dict[str, Any] = {"token_secret": secret, **spec.settings}
            try:
                kind = channel_class(spec.kind)
                self.channels[spec.name] = kind(spec.name, settings, data_dir=config.data_dir)
            except ValueError as exc:
                raise ConfigError(f"channel {spec.name!r}: {exc}") from None

    async def __aenter__(self) -> Hub:
        if self.migrate:
            before, after = await upgrade(self.db)
            if before != after:
                log.info("database migrated from %s to %s", before or "empty", after)
        if self.start_channels:
            for channel in self.channels.values():
                await channel.start(self)
            self.dispatcher.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.dispatcher.stop()
        for channel in self.channels.values():
            try:
                await channel.stop()
            except Exception:
                log.exception("channel %s did not stop cleanly", channel.name)
        await self.ingester.close()
        self.bus.close()
        await self.db.dispose()

    # -- ChannelHost ------------------------------------------------------------------------

    async def ingest(self, msg: InboundMessage) -> IngestResult:
        return await self.ingester.submit(msg)

    async def history(self, channel: str, address: str, limit: int = 100) -> list[TimelineEntry]:
        return await self.timeline.customer_history(channel, address, limit)

    async def customer_typing(self, channel: str, address: str) -> None:
        found = await self.timeline.latest_conversation(channel, address)
        if found is not None:
            conversation_id, assignee_id = found
            self.bus.publish(
                [
                    new_event(
                        "typing", conversation_id=conversation_id, who="customer", assignee_id=assignee_id
                    )
                ]
            )

    # -- agent side -------------------------------------------------------------------------

    async def agent_typing(self, conversation_id: int, channel: str, address: str) -> None:
        target = self.channels.get(channel)
        if target is not None:
            await target.send_typing(address)

    async def ensure_first_admin(self) -> tuple[str, str] | None:
        """On a first start with no agent, create an admin and return its login, to print once."""
        if await self.accounts.count():
            return None
        email, password = "admin@example.com", generate_password()
        await self.accounts.add(email, "Admin", Role.ADMIN, password)
        return email, password

    def channel_routes(self) -> list[Any]:
        return [route for channel in self.channels.values() for route in channel.routes()]
