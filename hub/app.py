"""The composition root: builds the hub from its configuration and runs its lifecycle.

Only this module knows every part (storage, ingest, outbox, channels, web app); the parts know
each other through the small interfaces of ``hub.types``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
from collections.abc import Collection
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import channels.email.channel  # registers the email channel kind
import channels.webchat  # noqa: F401 - registers the web-chat channel kind
from channels.base import BaseChannel, channel_class
from hub.access import Principal
from hub.attachments import AttachmentStore
from hub.auth import Accounts, generate_password
from hub.config import ConfigError, HubConfig
from hub.conversations import Conversations
from hub.cursors import Cursors
from hub.events import EventBus, EventType, new_event, record_events
from hub.ingest import Ingest, IngestSettings
from hub.lifecycle import stop_loop
from hub.model import EventRecord, InboundMessage, IngestResult, MessageStatus, Role, TimelineEntry
from hub.outbox import Dispatcher, OutboxSettings
from hub.reports import ChannelReports
from hub.timeline import Timeline
from routing.config import load_routing, routing_from_dict
from routing.queues import QueueStore
from routing.service import Router
from routing.stats import Supervision
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
        self.cursors = Cursors(self.db)
        self.reports = ChannelReports(self.db, self.bus)
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
            read_attachment=self.attachments.get,
        )
        if config.routing_file is not None:
            try:
                routing_settings, self._file_queues = load_routing(config.routing_file)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"routing file {config.routing_file}: {exc}") from None
        else:
            routing_settings, self._file_queues = routing_from_dict({})
        self.queues = QueueStore(self.db)
        self.router = Router(self.db, routing_settings, self.queues, record_events, self.bus.publish)
        self._router_triggers: asyncio.Task[None] | None = None
        self.supervision = Supervision(
            self.db, self.queues.current, routing_settings.costs, routing_settings.heartbeat_timeout_seconds
        )
        self._supervision_feed: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        # Supervisors with an open live socket in this process: the feed works only for them.
        self.supervisors_watching = 0
        self.conversations = Conversations(
            self.db,
            self.bus,
            self.dispatcher.wake,
            max_chars=config.max_message_chars,
            assignments=self.router,
            sends_attachments=self._sends_attachments,
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
        await self.queues.seed(self._file_queues)
        if self.start_channels:
            for channel in self.channels.values():
                await channel.start(self)
            self.dispatcher.start()
            self._supervision_feed = asyncio.get_running_loop().create_task(
                self.supervision_feed(), name="supervision-feed"
            )
            if self.config.routing_enabled:
                self.router.start()
                self._router_triggers = asyncio.get_running_loop().create_task(
                    self._wake_router_on_arrivals()
                )
        return self

    async def supervision_feed(self) -> None:
        """Queue and agent reports pushed to supervisors' live sockets (about once a second)."""
        await self.supervision.run(
            self.bus.publish,
            interval=1.0,
            watched=lambda: self.supervisors_watching > 0,
            stopping=self._stopping,
        )

    async def _wake_router_on_arrivals(self) -> None:
        """New conversations and customer messages reach the router at once, not at its next sweep.
        (The hub's own assignment changes wake it directly.)"""
        triggers = {EventType.MESSAGE_RECEIVED, EventType.CONVERSATION_CREATED}
        while True:
            async with self.bus.subscribe() as queue:
                while (event := await queue.get()) is not None:
                    if event.type in triggers:
                        self.router.wake(())
            await asyncio.sleep(0.1)  # fell behind: subscribe again; the sweep covered the gap

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopping.set()
        await stop_loop(self._supervision_feed, grace=5.0, name="supervision feed")
        if self._router_triggers is not None:  # waits on the bus only: no database work to cut
            self._router_triggers.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._router_triggers
        await self.router.stop()
        await self.dispatcher.stop()
        for channel in self.channels.values():
            try:
                await channel.stop()
            except Exception:
                log.exception("channel %s did not stop cleanly", channel.name)
        await self.ingester.close()
        self.bus.close()
        await self.db.dispose()

    def _sends_attachments(self, channel: str) -> bool:
        target = self.channels.get(channel)
        return target is not None and target.sends_attachments

    # -- ChannelHost ------------------------------------------------------------------------

    async def ingest(self, msg: InboundMessage) -> IngestResult:
        return await self.ingester.submit(msg)

    async def history(self, channel: str, address: str, limit: int = 100) -> list[TimelineEntry]:
        return await self.timeline.customer_history(channel, address, limit)

    async def load_cursor(self, channel: str, key: str) -> str | None:
        return await self.cursors.load(channel, key)

    async def save_cursor(self, channel: str, key: str, value: str) -> None:
        await self.cursors.save(channel, key, value)

    async def delivery_update(
        self, channel: str, external_id: str, status: MessageStatus, reason: str | None = None
    ) -> int | None:
        return await self.reports.delivery_update(channel, external_id, status, reason)

    async def refused(
        self, channel: str, external_id: str | None, reason: str, *, sender: str | None = None
    ) -> None:
        await self.reports.refused(channel, external_id, reason, sender=sender)

    async def known_ids(self, channel: str, external_ids: Collection[str]) -> set[str]:
        return await self.reports.known_ids(channel, external_ids)

    async def record(self, events: list[EventRecord]) -> None:
        await self.reports.record(events)

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

    async def authenticate(self, token: str) -> Principal | None:
        """The agent behind a session token, with the queues whose unassigned work they may see."""
        who = await self.accounts.authenticate(token)
        if who is None or who.is_supervisor:
            return who
        return dataclasses.replace(who, queues=await self.router.queues_for(who.id))

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
