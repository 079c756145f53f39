"""The durable outbox: a reply is a row; a dispatcher leases due rows and hands them to channels.

Row life: ``pending`` -> (claimed: ``sending`` with ``claimed_by``/``claimed_until``) -> ``sent`` |
``pending`` again with ``next_attempt_at`` pushed back (transient error) | ``failed`` (permanent
error, or attempts exhausted). A dispatcher that dies mid-send leaves a ``sending`` row whose lease
runs out; any dispatcher then claims it again. Finishing a row is fenced by ``claimed_by``, so a
dispatcher whose lease was taken over cannot overwrite the new owner's outcome.

The one duplicate this cannot prevent is a crash after the channel accepted a message and before the
row was marked sent; channels receive ``message_id`` to make such a redelivery idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import CursorResult, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from hub.errors import PermanentError, TransientError
from hub.events import EventBus, EventRecord, EventType, append_events, new_event
from hub.lifecycle import stop_loop
from hub.model import (
    Attachment,
    Direction,
    MessageStatus,
    OutboundMessage,
    SendResult,
    ThreadHints,
    utcnow,
)
from storage.engine import Database
from storage.models import AttachmentRow, Conversation, Message, OutboxRow

log = logging.getLogger(__name__)

# Ids of the thread a reply carries (an email's References): the root and the newest ones.
MAX_REFERENCES = 20


class OutboxStatus:
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class Sender(Protocol):
    async def send(self, msg: OutboundMessage) -> SendResult: ...


async def enqueue(session: AsyncSession, message_id: int, channel: str, now: datetime) -> None:
    """Add the outbox row for a reply, in the caller's transaction."""
    await session.execute(
        insert(OutboxRow).values(
            message_id=message_id,
            channel=channel,
            status=OutboxStatus.PENDING,
            attempts=0,
            next_attempt_at=now,
            claimed_by=None,
            claimed_until=None,
            last_error=None,
            created_at=now,
            updated_at=now,
        )
    )


@dataclass(slots=True)
class OutboxSettings:
    max_attempts: int = 10
    base_delay: float = 2.0
    max_delay: float = 900.0
    lease: float = 60.0
    poll_interval: float = 1.0
    batch: int = 50
    # A send that has not answered after this long counts as a transient failure.
    send_timeout: float = 30.0


def backoff_delay(attempts: int, settings: OutboxSettings, rng: random.Random | None = None) -> float:
    """Exponential back-off with full jitter (AWS architecture blog): uniform in [d/2, d]."""
    # The exponent is bounded before it meets a float (2.0 * 2**1024 overflows): with a large
    # max_attempts ("retry for days") the cap must still hold instead of raising OverflowError.
    doublings = min(max(0, attempts - 1), 64)
    ceiling = min(settings.max_delay, settings.base_delay * (2**doublings))
    return (rng or random).uniform(ceiling / 2, ceiling)


@dataclass(slots=True)
class _Job:
    outbox_id: int
    message_id: int
    channel: str
    attempts: int  # including the attempt this job is
    conversation_id: int


class Dispatcher:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        channels: Callable[[], Mapping[str, Sender]],
        settings: OutboxSettings | None = None,
        worker_id: str | None = None,
        read_attachment: Callable[[str], bytes] | None = None,
    ) -> None:
        """``read_attachment`` returns a stored file's bytes by its sha256; without it replies go
        out without their attachments."""
        self.db = db
        self.bus = bus
        self.channels = channels
        self.settings = settings or OutboxSettings()
        self.read_attachment = read_attachment
        self.worker_id = worker_id or f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name="outbox")

    async def stop(self, grace: float = 10.0) -> None:
        """End the loop after the pass in hand (see ``hub.lifecycle``); a send cut off by the grace
        period is retried after its lease, by this process or another."""
        self._stopping = True
        self._wake.set()
        await stop_loop(self._task, grace=grace, name="outbox dispatcher")
        self._task = None

    async def _run(self) -> None:
        while not self._stopping:
            # Cleared before the pass, not after it: a wake-up that arrives during the pass (a reply
            # committed after the claim query looked) must cut the next wait short, not be lost.
            self._wake.clear()
            try:
                worked = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox pass failed; retrying")
                worked = 0
            if worked:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)

    async def run_once(self) -> int:
        """Claim the due rows and deliver them; returns how many were handled.

        Replies to different conversations go out concurrently; replies within one conversation go
        out one after the other, oldest first, so the customer reads them in the order written.
        """
        jobs = await self._claim()
        by_conversation: dict[int, list[_Job]] = {}
        for job in jobs:
            by_conversation.setdefault(job.conversation_id, []).append(job)

        async def in_order(group: list[_Job]) -> None:
            for job in sorted(group, key=lambda j: j.message_id):
                await self._deliver(job)

        outcomes = await asyncio.gather(
            *(in_order(g) for g in by_conversation.values()), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                log.error("outbox delivery failed: %r", outcome)
        return len(jobs)

    async def _claim(self) -> list[_Job]:
        now = utcnow()
        due = (
            select(OutboxRow.id)
            .where(
                or_(
                    (OutboxRow.status == OutboxStatus.PENDING) & (OutboxRow.next_attempt_at <= now),
                    (OutboxRow.status == OutboxStatus.SENDING) & (OutboxRow.claimed_until < now),
                )
            )
            .order_by(OutboxRow.next_attempt_at, OutboxRow.id)
            .limit(self.settings.batch)
        )
        if not self.db.is_sqlite:
            due = due.with_for_update(skip_locked=True)
        async with self.db.write() as s:
            rows = await s.execute(
                update(OutboxRow)
                .where(OutboxRow.id.in_(due.scalar_subquery()))
                .values(
                    status=OutboxStatus.SENDING,
                    # Counted when claimed, not when finished: a reply whose sending kills the process
                    # still uses up its attempts instead of being retried for ever.
                    attempts=OutboxRow.attempts + 1,
                    claimed_by=self.worker_id,
                    claimed_until=now + timedelta(seconds=self.settings.lease),
                    updated_at=now,
                )
                .returning(OutboxRow.id, OutboxRow.message_id, OutboxRow.channel, OutboxRow.attempts)
                .execution_options(synchronize_session=False)
            )
            claimed = [(r.id, r.message_id, r.channel, r.attempts) for r in rows]
            if not claimed:
                return []
            rows = await s.execute(
                select(Message.id, Message.conversation_id).where(Message.id.in_([c[1] for c in claimed]))
            )
            conversations = {r.id: r.conversation_id for r in rows}
            return [_Job(i, m, ch, a, conversations[m]) for i, m, ch, a in claimed]

    async def _outbound(self, job: _Job) -> tuple[OutboundMessage, str | None]:
        """The message as the channel gets it, and the channel id it already holds (if any)."""
        async with self.db.read() as s:
            row = (
                await s.execute(
                    select(Message, Conversation.address, Conversation.subject)
                    .join(Conversation, Conversation.id == Message.conversation_id)
                    .where(Message.id == job.message_id)
                )
            ).one()
            message, address, subject = row
            thread = (
                await s.execute(
                    select(Message.external_id, Message.direction)
                    .where(
                        Message.conversation_id == message.conversation_id,
                        Message.channel == message.channel,
                        Message.id != message.id,
                        Message.external_id.is_not(None),
                        Message.direction != Direction.NOTE.value,
                    )
                    .order_by(Message.id)
                )
            ).all()
            files = (
                list(
                    (
                        await s.execute(
                            select(AttachmentRow)
                            .where(AttachmentRow.message_id == message.id)
                            .order_by(AttachmentRow.id)
                        )
                    ).scalars()
                )
                if self.read_attachment is not None
                else []
            )
        attachments = [await self._attachment(row) for row in files]
        ids = [r.external_id for r in thread]
        replied = [r.external_id for r in thread if r.direction == Direction.IN.value]
        outbound = OutboundMessage(
            message_id=message.id,
            conversation_id=message.conversation_id,
            channel=message.channel,
            recipient=address,
            text=message.text,
            html=message.html,
            author_name=message.author_name,
            created_at=message.created_at,
            attachments=tuple(attachments),
            thread=ThreadHints(
                subject=subject,
                in_reply_to=replied[-1] if replied else None,
                # The thread's root and its newest ids: what mail clients need to thread, bounded.
                references=tuple(ids[:1] + ids[1:][-(MAX_REFERENCES - 1) :]),
                reply_tag=f"c{message.conversation_id}",
            ),
        )
        return outbound, message.external_id

    async def _attachment(self, row: AttachmentRow) -> Attachment:
        """The stored file of a reply's attachment; one that is gone can never be sent."""
        assert self.read_attachment is not None
        try:
            data = await asyncio.to_thread(self.read_attachment, row.sha256)
        except FileNotFoundError:
            raise PermanentError(
                f"attachment {row.filename!r} (sha256 {row.sha256}) is missing from the attachment store"
            ) from None
        return Attachment(row.filename, row.content_type, data)

    async def _deliver(self, job: _Job) -> None:
        attempts = job.attempts
        if attempts > self.settings.max_attempts:
            # Earlier attempts never finished (the process died while sending): stop here.
            await self._fail(job, attempts - 1, f"gave up after {attempts - 1} attempts that never finished")
            return
        channel = self.channels().get(job.channel)
        try:
            if channel is None:
                raise PermanentError(f"channel {job.channel!r} is not configured on this hub")
            outbound, stored_id = await self._outbound(job)
            # Channels may choose the id of what they send (Channel.outbound_id); plain senders do not.
            choose_id = getattr(channel, "outbound_id", None)
            own_id = choose_id(outbound) if choose_id is not None else None
            if own_id is not None and own_id != stored_id:
                # Stored before the first attempt: a retry, and the customer's answer, find it.
                async with self.db.write() as s:
                    await self._keep_external_id(s, job.message_id, own_id)
            try:
                result = await asyncio.wait_for(channel.send(outbound), self.settings.send_timeout)
            except TimeoutError:
                raise TransientError(
                    f"no answer from the channel within {self.settings.send_timeout:g} s"
                ) from None
        except TransientError as exc:
            if attempts >= self.settings.max_attempts:
                await self._fail(job, attempts, f"gave up after {attempts} attempts: {exc}")
            else:
                delay = backoff_delay(attempts, self.settings)
                if exc.retry_after is not None:
                    # The remote side said when; still never beyond our own ceiling.
                    delay = min(max(0.0, exc.retry_after), self.settings.max_delay)
                await self._retry(job, attempts, str(exc), delay)
        except PermanentError as exc:
            await self._fail(job, attempts, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an unexpected library error: retry, but say so
            log.exception("channel %s raised an unexpected error", job.channel)
            if attempts >= self.settings.max_attempts:
                await self._fail(job, attempts, f"gave up after {attempts} attempts: {exc!r}")
            else:
                await self._retry(job, attempts, repr(exc), backoff_delay(attempts, self.settings))
        else:
            await self._succeed(job, attempts, result)

    def _fenced(self, job: _Job) -> Any:
        return update(OutboxRow).where(OutboxRow.id == job.outbox_id, OutboxRow.claimed_by == self.worker_id)

    async def _finish(
        self,
        job: _Job,
        values: dict[str, Any],
        message_values: dict[str, Any] | None,
        events: list[EventRecord],
        external_id: str | None = None,
    ) -> None:
        async with self.db.write() as s:
            done = await s.execute(
                self._fenced(job).values(**values).execution_options(synchronize_session=False)
            )
            if cast(CursorResult[Any], done).rowcount != 1:
                log.warning("outbox row %s was taken over by another dispatcher; leaving it", job.outbox_id)
                return
            conv = (
                await s.execute(
                    select(Conversation.id, Conversation.contact_id, Conversation.assignee_id)
                    .join(Message, Message.conversation_id == Conversation.id)
                    .where(Message.id == job.message_id)
                )
            ).one()
            if message_values:
                await s.execute(update(Message).where(Message.id == job.message_id).values(**message_values))
            if external_id:
                await self._keep_external_id(s, job.message_id, external_id)
            stored = await append_events(
                s,
                [
                    EventRecord(
                        type=e.type,
                        at=e.at,
                        conversation_id=conv.id,
                        contact_id=conv.contact_id,
                        message_id=job.message_id,
                        data={**e.data, "assignee_id": conv.assignee_id},
                    )
                    for e in events
                ],
            )
        self.bus.publish(stored)

    @staticmethod
    async def _keep_external_id(s: AsyncSession, message_id: int, external_id: str) -> None:
        """Store the channel's id of a delivered reply unless another message already holds it.

        ``(channel, external_id)`` is ingest's idempotency key, so the id may be taken (the mailbox
        copy of a sent email ingested first). The clash is confined to a savepoint: failing the
        whole finish would leave the row claimed, and the delivered reply be sent again every lease.
        """
        try:
            async with s.begin_nested():
                await s.execute(
                    update(Message)
                    .where(Message.id == message_id, Message.external_id.is_distinct_from(external_id))
                    .values(external_id=external_id)
                )
        except IntegrityError:
            log.warning("message %s: its channel id belongs to another message; not stored", message_id)

    async def _succeed(self, job: _Job, attempts: int, result: SendResult) -> None:
        now = utcnow()
        status = MessageStatus.DELIVERED if result.delivered else MessageStatus.SENT
        events = [
            new_event(
                EventType.MESSAGE_SENT,
                at=now,
                channel=job.channel,
                attempts=attempts,
                external_id=result.external_id,
            )
        ]
        if result.delivered:
            events.append(new_event(EventType.MESSAGE_DELIVERED, at=now, channel=job.channel))
        await self._finish(
            job,
            {
                "status": OutboxStatus.SENT,
                "attempts": attempts,
                "claimed_until": None,
                "updated_at": now,
                "last_error": None,
            },
            {"status": status.value, "error": None},
            events,
            result.external_id,
        )

    async def _retry(self, job: _Job, attempts: int, error: str, delay: float) -> None:
        now = utcnow()
        await self._finish(
            job,
            {
                "status": OutboxStatus.PENDING,
                "attempts": attempts,
                "next_attempt_at": now + timedelta(seconds=delay),
                "claimed_by": None,
                "claimed_until": None,
                "last_error": error,
                "updated_at": now,
            },
            None,
            [
                new_event(
                    EventType.MESSAGE_RETRYING,
                    at=now,
                    channel=job.channel,
                    attempts=attempts,
                    error=error,
                    retry_in_s=round(delay, 3),
                )
            ],
        )

    async def _fail(self, job: _Job, attempts: int, error: str) -> None:
        now = utcnow()
        await self._finish(
            job,
            {
                "status": OutboxStatus.FAILED,
                "attempts": attempts,
                "claimed_until": None,
                "last_error": error,
                "updated_at": now,
            },
            {"status": MessageStatus.FAILED.value, "error": error},
            [
                new_event(
                    EventType.MESSAGE_FAILED, at=now, channel=job.channel, attempts=attempts, error=error
                )
            ],
        )
