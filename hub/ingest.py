"""Idempotent ingest with group commit.

A channel hands each ``InboundMessage`` to :meth:`Ingest.submit` and acknowledges its sender only
when that returns: by then the message, its contact, conversation and events are committed.

Concurrent submissions are batched: while one transaction commits, the next messages queue up and
go together in the next one. There is no timer: a lone message is committed at once, and under load
batches grow by themselves, so throughput approaches the database's batched insert rate.

Idempotency rests on the unique key ``messages (channel, external_id)``. A replay finds the stored
row and gets the same answer; duplicates inside one batch collapse to one row; a duplicate
committed meanwhile by another process makes the batch fail on the unique key, after which each
message is retried in its own transaction and finds the other's row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import nh3
from sqlalchemy import Select, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hub.attachments import AttachmentStore
from hub.errors import IngestRefused
from hub.events import EventBus, EventRecord, EventType, new_event, record_events
from hub.identity import InvalidAddress, normalise
from hub.model import (
    ConversationStatus,
    Direction,
    InboundMessage,
    IngestResult,
    MessageStatus,
    utcnow,
)
from storage.bulk import insert_rows, update_rows
from storage.engine import Database
from storage.ids import allocate_ids
from storage.models import AttachmentRow, Contact, ContactIdentity, Conversation, Message

log = logging.getLogger(__name__)

IngestListener = Callable[[Sequence[IngestResult]], Awaitable[None]]


@dataclass(slots=True)
class IngestSettings:
    reopen_within: timedelta = timedelta(hours=24)
    max_batch: int = 500
    max_text_chars: int = 100_000
    # How long a subject (with the same contact, on the same channel) still threads a message.
    subject_window: timedelta = timedelta(days=14)
    default_region: str | None = None


@dataclass(slots=True)
class _Pending:
    msg: InboundMessage
    address: str
    future: asyncio.Future[IngestResult]
    shas: list[str] = field(default_factory=list)
    html: str | None = None


class Ingest:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        attachments: AttachmentStore,
        settings: IngestSettings | None = None,
    ) -> None:
        self.db = db
        self.bus = bus
        self.attachments = attachments
        self.settings = settings or IngestSettings()
        self.listeners: list[IngestListener] = []
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0

    # -- the edge ---------------------------------------------------------------------------

    async def submit(self, msg: InboundMessage) -> IngestResult:
        """Store ``msg`` (or find it stored) and return once it is committed."""
        pending = self._prepare(msg)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="ingest")
        self._queue.put_nowait(pending)
        return await pending.future

    def _prepare(self, msg: InboundMessage) -> _Pending:
        if not msg.external_id:
            raise IngestRefused("the channel gave no external id; ingest cannot be idempotent without one")
        if len(msg.external_id) > 500:
            raise IngestRefused("the channel's message id is longer than 500 characters")
        if len(msg.text) > self.settings.max_text_chars:
            raise IngestRefused(
                f"message is {len(msg.text)} characters; the limit is {self.settings.max_text_chars}"
            )
        for field_name, value in (("text", msg.text), ("sender name", msg.sender_name), ("html", msg.html)):
            if value is not None and not _encodable(value):
                raise IngestRefused(f"the {field_name} is not valid Unicode (it holds a lone surrogate)")
        try:
            address = normalise(msg.identity_kind, msg.sender, default_region=self.settings.default_region)
        except InvalidAddress as exc:
            raise IngestRefused(str(exc)) from None
        for attachment in msg.attachments:
            try:
                self.attachments.check(attachment)
            except ValueError as exc:
                raise IngestRefused(str(exc)) from None
        future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        shas = [self.attachments.put(a.data) for a in msg.attachments]
        # Defence in depth: whatever a channel hands over, stored HTML never carries script.
        html = nh3.clean(msg.html) if msg.html else None
        return _Pending(msg, address, future, shas, html)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    # -- the batcher ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.settings.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit_batch(batch)

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        try:
            results, events = await self._store(batch)
        except Exception as exc:
            if len(batch) == 1 and not isinstance(exc, IntegrityError):
                log.exception("ingest of one message failed")
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            # Another process committed one of these keys (or an identity) meanwhile, or one message
            # the database will not take: go one by one, so each sender hears only of its own message.
            if not isinstance(exc, IntegrityError):
                log.warning(
                    "ingest batch of %d failed (%s); storing its messages one by one", len(batch), exc
                )
            results, events = [], []
            for item in batch:
                try:
                    r, e = await self._store_with_retry([item])
                except Exception as one_exc:
                    log.exception("ingest of one message failed")
                    r, e = [one_exc], []
                results.extend(r)
                events.extend(e)
        self.batches += 1
        self.bus.publish(events)
        stored: list[IngestResult] = []
        for item, result in zip(batch, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)
                if not result.duplicate:
                    stored.append(result)
        for listener in self.listeners:
            try:
                await listener(stored)
            except Exception:
                log.exception("ingest listener failed")

    async def _store_with_retry(
        self, batch: list[_Pending]
    ) -> tuple[list[IngestResult | BaseException], list[EventRecord]]:
        for attempt in range(3):
            try:
                return await self._store(batch)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _store(
        self, batch: list[_Pending]
    ) -> tuple[list[IngestResult | BaseException], list[EventRecord]]:
        settings = self.settings
        return await self.db.run_write(lambda session: _store_batch(session, batch, settings))


def _store_batch(
    session: Session, batch: list[_Pending], settings: IngestSettings
) -> tuple[list[IngestResult | BaseException], list[EventRecord]]:
    """The whole batch in one transaction. Synchronous: on SQLite it runs on the writer thread in one
    hand-off (see ``Database.run_write``). It must not touch the asyncio futures of ``batch``."""
    now = utcnow()
    results: list[IngestResult | BaseException | None] = [None] * len(batch)
    events: list[EventRecord] = []

    # 1. Replays: keys already stored, and keys repeated inside this batch.
    keys = {(p.msg.channel, p.msg.external_id) for p in batch}
    _custom_plans(session, True)
    stored: dict[tuple[str, str | None], IngestResult] = {}
    # One IN list per channel rather than a row-value IN: SQLite only uses the unique index that way.
    for channel in {c for c, _ in keys}:
        rows = session.connection().execute(
            select(Message.id, Message.conversation_id, Message.contact_id, Message.external_id).where(
                Message.channel == channel, Message.external_id.in_([e for c, e in keys if c == channel])
            )
        )
        for row in rows:
            stored[(channel, row.external_id)] = IngestResult(
                row.id, row.conversation_id, row.contact_id, True
            )
    fresh: list[int] = []
    first_of_key: dict[tuple[str, str], int] = {}
    for i, p in enumerate(batch):
        key = (p.msg.channel, p.msg.external_id)
        if key in stored:
            results[i] = stored[key]
        elif key in first_of_key:
            continue  # filled in from the first occurrence below
        else:
            first_of_key[key] = i
            fresh.append(i)

    if fresh:
        contacts = _resolve_contacts(session, [batch[i] for i in fresh], now, events)
        threading = _resolve_conversations(
            session, [batch[i] for i in fresh], contacts, now, settings, events
        )
    _custom_plans(session, False)
    if fresh:
        message_rows = []
        for n, i in enumerate(fresh):
            p = batch[i]
            contact_id = contacts[(p.msg.identity_kind.value, p.address)]
            conv = threading.conversations[n]
            message_rows.append(
                {
                    "conversation_id": conv.id,
                    "contact_id": contact_id,
                    "channel": p.msg.channel,
                    "external_id": p.msg.external_id,
                    "direction": Direction.IN.value,
                    "status": MessageStatus.RECEIVED.value,
                    "agent_id": None,
                    "sender": p.address,
                    "author_name": _clip(p.msg.sender_name, 200),
                    "text": p.msg.text,
                    "html": p.html,
                    "error": None,
                    "meta": _thread_meta(p.msg, threading.rules[n], settings.max_text_chars),
                    "created_at": p.msg.received_at,
                }
            )
        message_ids = allocate_ids(session, Message, len(message_rows))
        for message_row, message_id in zip(message_rows, message_ids, strict=True):
            message_row["id"] = message_id
        insert_rows(session, Message, message_rows)
        attachment_rows = []
        for n, (i, message_id) in enumerate(zip(fresh, message_ids, strict=True)):
            p = batch[i]
            contact_id = contacts[(p.msg.identity_kind.value, p.address)]
            conv = threading.conversations[n]
            results[i] = IngestResult(message_id, conv.id, contact_id, False)
            conv.last_message_at = max(conv.last_message_at, p.msg.received_at)
            events.append(
                new_event(
                    EventType.MESSAGE_RECEIVED,
                    at=now,
                    conversation_id=conv.id,
                    contact_id=contact_id,
                    message_id=message_id,
                    channel=p.msg.channel,
                    channel_kind=p.msg.channel_kind,
                    assignee_id=conv.assignee_id,
                    queue=conv.queue,
                    text=p.msg.text[:500],
                    author=p.msg.sender_name or p.address,
                    thread_rule=threading.rules[n],
                    **({"automated": True} if p.msg.automated else {}),
                )
            )
            for attachment, sha in zip(p.msg.attachments, p.shas, strict=True):
                attachment_rows.append(
                    {
                        "message_id": message_id,
                        "filename": attachment.filename,
                        "content_type": attachment.content_type,
                        "size": len(attachment.data),
                        "sha256": sha,
                    }
                )
        if attachment_rows:
            insert_rows(session, AttachmentRow, attachment_rows)
        touched = {id(c): c for c in threading.conversations}.values()
        update_rows(
            session,
            Conversation,
            "id",
            [
                {
                    "id": c.id,
                    "status": c.status,
                    "last_message_at": c.last_message_at,
                    "updated_at": now,
                    "resolved_at": c.resolved_at,
                }
                for c in touched
            ],
        )

    for i, p in enumerate(batch):
        if results[i] is None:
            first = results[first_of_key[(p.msg.channel, p.msg.external_id)]]
            assert isinstance(first, IngestResult)
            results[i] = IngestResult(first.message_id, first.conversation_id, first.contact_id, True)

    recorded = record_events(session, events)
    return [r for r in results if r is not None], recorded


def _clip(text: str | None, limit: int) -> str | None:
    """Display fields (names, subjects) are cut to their column, never a reason to lose a message."""
    return text[: limit - 1] + "…" if text is not None and len(text) > limit else text


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _custom_plans(session: Session, on: bool) -> None:
    """Plan the batch lookups for their actual IN lists (PostgreSQL only).

    asyncpg prepares statements, and after five runs PostgreSQL may switch to a generic plan; for
    ``external_id IN (...)`` on a young table that plan scans the whole channel (seen: 18 ms -> 600 ms
    per batch). Forcing custom plans for the whole session would instead re-plan every row of the
    batch inserts, so it is switched on for the lookups only.
    """
    if session.get_bind().dialect.name == "postgresql":
        mode = "force_custom_plan" if on else "auto"
        session.execute(text(f"SET LOCAL plan_cache_mode = {mode}"))


def _thread_meta(msg: InboundMessage, rule: str, max_chars: int) -> dict[str, object]:
    meta: dict[str, object] = {"thread_rule": rule}
    if msg.automated:
        meta["automated"] = True
    if msg.full_text and msg.full_text != msg.text:
        meta["full_text"] = _clip(msg.full_text, max_chars)
    if msg.recipient:
        meta["recipient"] = msg.recipient
    t = msg.thread
    if t.subject:
        meta["subject"] = t.subject
    if t.in_reply_to:
        meta["in_reply_to"] = t.in_reply_to
    if t.references:
        meta["references"] = list(t.references)
    if t.reply_tag:
        meta["reply_tag"] = t.reply_tag
    return meta


def _resolve_contacts(
    session: Session, items: list[_Pending], now: datetime, events: list[EventRecord]
) -> dict[tuple[str, str], int]:
    """Map each (identity kind, normalised address) to a contact, creating contacts as needed."""
    wanted: dict[tuple[str, str], _Pending] = {}
    for p in items:
        wanted.setdefault((p.msg.identity_kind.value, p.address), p)
    found: dict[tuple[str, str], int] = {}
    for kind in {k for k, _ in wanted}:
        rows = session.connection().execute(
            select(ContactIdentity.value, ContactIdentity.contact_id).where(
                ContactIdentity.kind == kind, ContactIdentity.value.in_([v for k, v in wanted if k == kind])
            )
        )
        for row in rows:
            found[(kind, row.value)] = row.contact_id
    missing = [key for key in wanted if key not in found]
    if missing:
        contact_ids = allocate_ids(session, Contact, len(missing))
        insert_rows(
            session,
            Contact,
            [
                {
                    "id": contact_id,
                    "name": _clip(wanted[key].msg.sender_name, 200),
                    "attributes": dict(wanted[key].msg.contact_attributes),
                    "merged_into_id": None,
                    "created_at": now,
                    "updated_at": now,
                }
                for key, contact_id in zip(missing, contact_ids, strict=True)
            ],
        )
        for key, contact_id in zip(missing, contact_ids, strict=True):
            found[key] = contact_id
            events.append(
                new_event(EventType.CONTACT_CREATED, at=now, contact_id=contact_id, identity=list(key))
            )
        insert_rows(
            session,
            ContactIdentity,
            [{"contact_id": found[k], "kind": k[0], "value": k[1], "created_at": now} for k in missing],
        )
    return found


@dataclass(slots=True)
class _Conv:
    id: int
    status: str
    assignee_id: int | None
    last_message_at: datetime
    resolved_at: datetime | None
    # The routing queue it belongs to: events carry it so an agent's live feed shows unassigned
    # conversations only of the queues they serve.
    queue: str | None = None
    contact_id: int = 0
    channel: str = ""
    subject: str | None = None
    merged_into_id: int | None = None


_REPLY_TAG = re.compile(r"c(\d{1,18})")
_SUBJECT_PREFIX = re.compile(r"^\s*((re|aw|sv|vs|antw|fwd?|wg|tr|rv)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
_CONV_COLUMNS = (
    Conversation.id,
    Conversation.contact_id,
    Conversation.channel,
    Conversation.status,
    Conversation.assignee_id,
    Conversation.last_message_at,
    Conversation.resolved_at,
    Conversation.queue,
    Conversation.subject,
    Conversation.merged_into_id,
)


def thread_subject(subject: str | None) -> str:
    """A subject as threads compare it: without Re:/Fwd: prefixes (any language's), case or spacing."""
    return " ".join(_SUBJECT_PREFIX.sub("", subject or "").split()).casefold()


def _conv_from(row: Any) -> _Conv:
    return _Conv(
        row.id,
        row.status,
        row.assignee_id,
        row.last_message_at,
        row.resolved_at,
        row.queue,
        row.contact_id,
        row.channel,
        row.subject,
        row.merged_into_id,
    )


def _load_conversations(session: Session, ids: set[int]) -> dict[int, _Conv]:
    """Conversations by id, with those they were merged into (a merge moves the thread along)."""
    found: dict[int, _Conv] = {}
    wanted = set(ids)
    for _ in range(10):  # merge chains are short; the bound only guards against a cycle
        wanted -= found.keys()
        if not wanted:
            break
        query = select(*_CONV_COLUMNS).where(Conversation.id.in_(wanted)).order_by(Conversation.id)
        for row in session.connection().execute(_locked(session, query)):
            found[row.id] = _conv_from(row)
        wanted = {c.merged_into_id for c in found.values() if c.merged_into_id is not None}
    return found


_Query = TypeVar("_Query", bound="Select[*tuple[Any, ...]]")


def _locked(session: Session, query: _Query) -> _Query:
    """On PostgreSQL, lock the conversations a batch may write to: a merge committed meanwhile is
    then seen (the row is read again after the lock) and its messages follow it, instead of landing
    in the conversation it emptied. SQLite's single writer already serialises both."""
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(of=Conversation)
    return query


def _follow(conv: _Conv | None, known: dict[int, _Conv]) -> _Conv | None:
    for _ in range(10):
        if conv is None or conv.merged_into_id is None:
            return conv
        conv = known.get(conv.merged_into_id)
    return conv


@dataclass(slots=True)
class _Threading:
    """Where each message of a batch goes, and by which rule (recorded on the message and event)."""

    conversations: list[_Conv]
    rules: list[str]


def _resolve_conversations(
    session: Session,
    items: list[_Pending],
    contacts: dict[tuple[str, str], int],
    now: datetime,
    settings: IngestSettings,
    events: list[EventRecord],
) -> _Threading:
    """Threading, in order: the channel ids the message replies to, its reply tag, the same subject
    from the same contact inside the subject window; then, unless the channel threads strictly,
    the contact's open (or recently resolved) conversation on the channel; else a new conversation.
    A conversation resolved longer than ``reopen_within`` ago is not reopened: a new one starts."""
    contact_of = [contacts[(p.msg.identity_kind.value, p.address)] for p in items]

    # Explicit keys: stored messages the new ones reply to, and reply tags.
    referenced: dict[tuple[str, str], int] = {}
    by_channel: dict[str, set[str]] = {}
    for p in items:
        t = p.msg.thread
        wanted = [t.in_reply_to, *t.references] if t.in_reply_to else list(t.references)
        by_channel.setdefault(p.msg.channel, set()).update(i for i in wanted if i)
    for channel, ids in by_channel.items():
        if ids:
            rows = session.connection().execute(
                select(Message.external_id, Message.conversation_id).where(
                    Message.channel == channel, Message.external_id.in_(ids)
                )
            )
            for row in rows:
                referenced[(channel, row.external_id)] = row.conversation_id
    tagged: dict[int, int] = {}
    for i, p in enumerate(items):
        match = _REPLY_TAG.fullmatch(p.msg.thread.reply_tag or "")
        if match:
            tagged[i] = int(match.group(1))
    known = _load_conversations(session, set(referenced.values()) | set(tagged.values()))

    # The contacts' recent conversations on these channels: subject fallback and chat threading.
    recent: dict[tuple[int, str], list[_Conv]] = {}
    horizon = now - max(settings.reopen_within, settings.subject_window)
    rows = session.connection().execute(
        _locked(
            session,
            select(*_CONV_COLUMNS)
            .where(Conversation.contact_id.in_(set(contact_of)))
            .where(Conversation.channel.in_({p.msg.channel for p in items}))
            .where(Conversation.merged_into_id.is_(None))
            .where(
                (Conversation.status != ConversationStatus.RESOLVED.value)
                | (Conversation.last_message_at >= horizon)
                | (Conversation.resolved_at >= now - settings.reopen_within)
            )
            .order_by(Conversation.id),
        )
    )
    for row in rows:
        seen = known.setdefault(row.id, _conv_from(row))
        recent.setdefault((seen.contact_id, seen.channel), []).append(seen)

    chosen: list[_Conv] = []
    rules: list[str] = []
    created: dict[tuple[Any, ...], _Conv] = {}
    in_batch: dict[tuple[str, str], _Conv] = {}
    reopened: set[int] = set()
    fresh: list[tuple[_Conv, _Pending, int | None]] = []
    for i, p in enumerate(items):
        contact_id, channel, t = contact_of[i], p.msg.channel, p.msg.thread
        conv: _Conv | None = None
        rule = "new"
        for ref in ([t.in_reply_to] if t.in_reply_to else []) + list(reversed(t.references)):
            target = in_batch.get((channel, ref))
            if target is None and (channel, ref) in referenced:
                target = _follow(known.get(referenced[(channel, ref)]), known)
            if target is not None:
                conv, rule = target, "in_reply_to" if ref == t.in_reply_to else "references"
                break
        if conv is None and i in tagged:
            target = _follow(known.get(tagged[i]), known)
            if target is not None and target.channel == channel:
                conv, rule = target, "reply_tag"
        subject = thread_subject(t.subject)
        candidates = recent.get((contact_id, channel), [])
        if conv is None and subject:
            same = [
                c
                for c in candidates
                if thread_subject(c.subject) == subject and c.last_message_at >= now - settings.subject_window
            ]
            if same:
                conv, rule = same[-1], "subject"
        if conv is None and not t.strict:
            open_ones = [
                c
                for c in candidates
                if c.status != ConversationStatus.RESOLVED.value
                or (c.resolved_at is not None and c.resolved_at >= now - settings.reopen_within)
            ]
            if open_ones:
                conv, rule = open_ones[-1], "open_conversation"
        follows = None
        if (
            conv is not None
            and conv.status == ConversationStatus.RESOLVED.value
            and conv.resolved_at is not None
            and conv.resolved_at < now - settings.reopen_within
        ):
            follows, conv, rule = conv.id, None, "new"
        if conv is None:
            key: tuple[Any, ...] = (contact_id, channel, subject) if t.strict else (contact_id, channel)
            conv = created.get(key)
            if conv is None:
                conv = created[key] = _Conv(
                    0,
                    ConversationStatus.OPEN.value,
                    None,
                    p.msg.received_at,
                    None,
                    None,
                    contact_id,
                    channel,
                    t.subject,
                )
                fresh.append((conv, p, follows))
                recent.setdefault((contact_id, channel), []).append(conv)
            elif rule == "new":
                rule = "subject" if t.strict else "open_conversation"
        elif conv.status != ConversationStatus.OPEN.value and not p.msg.automated and conv.id not in reopened:
            reopened.add(conv.id)
            events.append(
                new_event(
                    EventType.CONVERSATION_STATUS_CHANGED,
                    at=now,
                    conversation_id=conv.id,
                    contact_id=conv.contact_id,
                    previous=conv.status,
                    status=ConversationStatus.OPEN.value,
                    reason="customer replied",
                    assignee_id=conv.assignee_id,
                    queue=conv.queue,
                )
            )
            conv.status = ConversationStatus.OPEN.value
            conv.resolved_at = None
        in_batch[(channel, p.msg.external_id)] = conv
        chosen.append(conv)
        rules.append(rule)
    _insert_conversations(session, fresh, now, events)
    return _Threading(chosen, rules)


def _insert_conversations(
    session: Session,
    fresh: list[tuple[_Conv, _Pending, int | None]],
    now: datetime,
    events: list[EventRecord],
) -> None:
    """The batch's new conversations in one insert; their ids are set on the ``_Conv`` objects."""
    if not fresh:
        return
    ids = allocate_ids(session, Conversation, len(fresh))
    rows = []
    for (conv, p, follows), conv_id in zip(fresh, ids, strict=True):
        conv.id = conv_id
        rows.append(
            {
                "id": conv_id,
                "contact_id": conv.contact_id,
                "channel": p.msg.channel,
                "channel_kind": p.msg.channel_kind,
                "address": p.address,
                "status": ConversationStatus.OPEN.value,
                "assignee_id": None,
                "priority": 0,
                "subject": _clip(p.msg.thread.subject, 500),
                "created_at": now,
                "updated_at": now,
                "last_message_at": p.msg.received_at,
                "resolved_at": None,
            }
        )
        data: dict[str, Any] = {
            "channel": p.msg.channel,
            "channel_kind": p.msg.channel_kind,
            "assignee_id": None,
        }
        if follows is not None:
            data["follows"] = follows
        events.append(
            new_event(
                EventType.CONVERSATION_CREATED,
                at=now,
                conversation_id=conv_id,
                contact_id=conv.contact_id,
                **data,
            )
        )
    insert_rows(session, Conversation, rows)
