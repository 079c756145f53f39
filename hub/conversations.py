"""Writes an agent makes on a conversation: reply, private note, status, assignee, priority, and
splitting a message off into a new conversation or merging one conversation into another.

A reply and its outbox row are committed in one transaction (the durable-outbox invariant); the
dispatcher is only woken afterwards, so a crash at any point leaves either nothing or a row that
will be sent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, cast

from sqlalchemy import func, select, update

from hub.access import Principal, may_see_conversation
from hub.attachments import AttachmentStore
from hub.errors import UserError
from hub.events import EventBus, EventRecord, EventType, append_events, new_event
from hub.model import Attachment, ConversationStatus, Direction, MessageStatus, utcnow
from hub.outbox import OutboxStatus, enqueue
from hub.timeline import ID_RANGE, message_json, not_found
from hub.types import Assignments
from storage.engine import Database
from storage.models import Agent, AttachmentRow, Conversation, Message, OutboxRow

PRIORITIES = {0: "none", 1: "low", 2: "medium", 3: "high", 4: "urgent"}
MAX_REPLY_ATTACHMENTS = 10
MAX_FILENAME_CHARS = 200
DEFAULT_CONTENT_TYPE = "application/octet-stream"
# RFC 6838 section 4.2 restricted names: ``type/subtype``, no parameters (they would travel into the
# Content-Type header the download and the channel send).
CONTENT_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


def clean_text(text: Any, max_chars: int) -> str:
    if not isinstance(text, str):
        raise UserError("invalid_text", "text must be a string")
    if not text.strip():
        raise UserError("empty_text", "text must not be empty")
    if len(text) > max_chars:
        raise UserError(
            "text_too_long", f"text is {len(text)} characters; the limit is {max_chars}", status=413
        )
    return text


def clean_filename(name: str) -> str:
    """A file name safe to store, send and offer for download: the last path component, without
    control or format characters, at most ``MAX_FILENAME_CHARS`` long with its extension kept."""
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp"))
    name = name.strip().strip(".").strip()
    if not name:
        return "attachment"
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        if dot and stem and 0 < len(ext) <= 20:
            name = stem[: MAX_FILENAME_CHARS - len(ext) - 1].rstrip() + "." + ext
        else:
            name = name[:MAX_FILENAME_CHARS]
    return name


def clean_attachments(raw: Any, max_bytes: int) -> tuple[Attachment, ...]:
    """Decode a reply's ``attachments`` field (``[{filename, content_type, data: base64}]``).

    Shape errors are 422; a file over ``max_bytes`` is 413, told before its base64 is decoded."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise UserError(
            "invalid_attachments",
            "attachments must be a list of {filename, content_type, data} objects",
            status=422,
        )
    if len(raw) > MAX_REPLY_ATTACHMENTS:
        raise UserError(
            "too_many_attachments",
            f"{len(raw)} attachments; a reply carries at most {MAX_REPLY_ATTACHMENTS}",
            status=422,
        )
    # The longest base64 text a file within the limit can have (4 characters per 3 bytes).
    max_encoded = 4 * -(-max_bytes // 3)
    cleaned = []
    for n, item in enumerate(raw, 1):
        unknown = set(item) - {"filename", "content_type", "data"}
        if unknown:
            raise UserError(
                "invalid_attachment", f"attachment {n}: unknown field {', '.join(sorted(unknown))}", 422
            )
        filename, content_type, data = item.get("filename"), item.get("content_type"), item.get("data")
        if not isinstance(filename, str):
            raise UserError("invalid_attachment", f"attachment {n}: filename must be a string", 422)
        name = clean_filename(filename)
        if content_type is None:
            content_type = DEFAULT_CONTENT_TYPE
        if not isinstance(content_type, str) or not CONTENT_TYPE.fullmatch(content_type.lower()):
            raise UserError(
                "invalid_content_type",
                f"attachment {name!r}: content_type must look like type/subtype, e.g. application/pdf",
                422,
            )
        if not isinstance(data, str):
            raise UserError("invalid_attachment", f"attachment {name!r}: data must be a base64 string", 422)
        if len(data) > max_encoded:
            raise UserError(
                "attachment_too_large",
                f"attachment {name!r} is over {max_bytes} bytes (limits.max_attachment_bytes)",
                413,
            )
        try:
            # Padded, without line breaks (RFC 4648 section 3); Python alone would allow extra "=".
            if len(data) % 4:
                raise binascii.Error("length not a multiple of 4")
            decoded = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise UserError(
                "invalid_base64", f"attachment {name!r}: data is not valid base64 (RFC 4648)", 422
            ) from None
        cleaned.append(Attachment(name, content_type.lower(), decoded))
    return tuple(cleaned)


class Conversations:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        wake_outbox: Callable[[], None],
        max_chars: int,
        assignments: Assignments,
        sends_attachments: Callable[[str], bool] = lambda channel: True,
    ) -> None:
        """``sends_attachments(channel)`` says whether that channel can deliver a reply's files."""
        self.db = db
        self.bus = bus
        self.wake_outbox = wake_outbox
        self.max_chars = max_chars
        self.assignments = assignments
        self.sends_attachments = sends_attachments

    async def _change_status(
        self,
        s: Any,
        conv: Conversation,
        status: str,
        who: Principal,
        now: datetime,
        reason: str | None = None,
    ) -> list[EventRecord]:
        """Set the status and tell the claim path (which ends assignments and waits of a resolved
        conversation, giving capacity back); returns the events to record."""
        previous = conv.status
        conv.status = status
        conv.resolved_at = now if status == ConversationStatus.RESOLVED.value else None
        detail: dict[str, Any] = {"reason": reason} if reason else {}
        event = new_event(
            EventType.CONVERSATION_STATUS_CHANGED,
            at=now,
            conversation_id=conv.id,
            contact_id=conv.contact_id,
            agent_id=who.id,
            previous=previous,
            status=status,
            **detail,
            assignee_id=conv.assignee_id,
        )
        await s.flush()
        conv_id = conv.id
        changed: list[EventRecord] = await s.run_sync(
            lambda session: self.assignments.status_changed(session, conv_id, status, now=now)
        )
        return [event, *changed]

    async def _assign(
        self, s: Any, conv: Conversation, agent_id: int | None, who: Principal, now: datetime, reason: str
    ) -> list[EventRecord]:
        """Change the owner through the router's claim path (capacity, one owner, events)."""
        previous = conv.assignee_id
        events: list[EventRecord] = await s.run_sync(
            lambda session: self.assignments.assign(
                session,
                conv.id,
                agent_id,
                by=who.id,
                reason=reason,
                expected_assignee=previous,
                now=now,
            )
        )
        conv.assignee_id = agent_id
        return events

    async def _load(
        self, s: Any, who: Principal, conversation_id: int, *, lock: bool = False
    ) -> Conversation:
        q = select(Conversation).where(Conversation.id == conversation_id)
        if lock and not self.db.is_sqlite:
            q = q.with_for_update()
        conv = (await s.execute(q)).scalar_one_or_none()
        if conv is None or not may_see_conversation(who, conv.assignee_id, conv.queue, conv.offered_to):
            raise not_found("conversation", conversation_id)
        return conv

    async def reply(
        self,
        who: Principal,
        conversation_id: int,
        text: Any,
        attachments: Sequence[Attachment] = (),
        *,
        store: AttachmentStore | None = None,
    ) -> dict[str, Any]:
        """Store a reply (with its files) and its outbox row in one transaction, then wake the
        dispatcher. With attachments the text may be empty; ``store`` keeps their bytes."""
        if attachments and (text is None or (isinstance(text, str) and not text.strip())):
            text = ""
        else:
            text = clean_text(text, self.max_chars)
        if len(attachments) > MAX_REPLY_ATTACHMENTS:
            raise UserError(
                "too_many_attachments", f"a reply carries at most {MAX_REPLY_ATTACHMENTS} attachments", 422
            )
        if attachments and store is None:
            raise ValueError("a reply with attachments needs the attachment store")
        shas: list[str] = []
        if store is not None:
            for attachment in attachments:
                try:
                    store.check(attachment)
                except ValueError as exc:
                    raise UserError("attachment_too_large", str(exc), status=413) from None
            # Files first, rows in the transaction: a crash leaves an orphan file, never a dangling row.
            shas = [await asyncio.to_thread(store.put, a.data) for a in attachments]
        now = utcnow()
        async with self.db.write() as s:
            conv = await self._load(s, who, conversation_id, lock=True)
            if attachments and not self.sends_attachments(conv.channel):
                raise UserError(
                    "attachments_unsupported",
                    f"the {conv.channel} channel cannot send attachments; send the text alone",
                    status=422,
                )
            pending: list[EventRecord] = []
            if conv.assignee_id is None:
                # Answering an unassigned conversation takes it, as in every shared inbox.
                pending += await self._assign(s, conv, who.id, who, now, reason="replied")
            if conv.first_reply_at is None:
                conv.first_reply_at = now
            message = _agent_message(conv, who, Direction.OUT, MessageStatus.QUEUED, text, now)
            s.add(message)
            conv.updated_at = now
            conv.last_message_at = now
            await s.flush()
            rows = [
                AttachmentRow(
                    message_id=message.id,
                    filename=a.filename,
                    content_type=a.content_type,
                    size=len(a.data),
                    sha256=sha,
                )
                for a, sha in zip(attachments, shas, strict=True)
            ]
            s.add_all(rows)
            await enqueue(s, message.id, conv.channel, now)
            pending.append(
                new_event(
                    EventType.MESSAGE_QUEUED,
                    at=now,
                    conversation_id=conv.id,
                    contact_id=conv.contact_id,
                    message_id=message.id,
                    agent_id=who.id,
                    channel=conv.channel,
                    assignee_id=conv.assignee_id,
                    text=text[:500],
                )
            )
            events = await append_events(s, pending)
        self.bus.publish(events)
        self.wake_outbox()
        return {"message": message_json(message, rows)}

    async def note(self, who: Principal, conversation_id: int, text: Any) -> dict[str, Any]:
        text = clean_text(text, self.max_chars)
        now = utcnow()
        async with self.db.write() as s:
            conv = await self._load(s, who, conversation_id)
            message = _agent_message(conv, who, Direction.NOTE, MessageStatus.NOTE, text, now)
            s.add(message)
            conv.updated_at = now
            await s.flush()
            events = await append_events(
                s,
                [
                    new_event(
                        EventType.NOTE_ADDED,
                        at=now,
                        conversation_id=conv.id,
                        contact_id=conv.contact_id,
                        message_id=message.id,
                        agent_id=who.id,
                        assignee_id=conv.assignee_id,
                    )
                ],
            )
        self.bus.publish(events)
        return {"message": message_json(message)}

    async def update(self, who: Principal, conversation_id: int, changes: dict[str, Any]) -> None:
        unknown = set(changes) - {"status", "assignee_id", "priority"}
        if unknown:
            raise UserError("unknown_field", f"cannot change {', '.join(sorted(unknown))}")
        if not changes:
            raise UserError("empty_patch", "give at least one of status, assignee_id, priority")
        status = changes.get("status")
        # The type check comes first: a list or an object is unhashable and `in` on a set would raise.
        if "status" in changes and (
            type(status) is not str or status not in {s.value for s in ConversationStatus}
        ):
            raise UserError("invalid_status", "status must be one of open, pending, snoozed, resolved")
        priority = changes.get("priority")
        if "priority" in changes and (type(priority) is not int or priority not in PRIORITIES):
            raise UserError("invalid_priority", "priority must be an integer from 0 (none) to 4 (urgent)")
        assignee = changes.get("assignee_id")
        if (
            "assignee_id" in changes
            and assignee is not None
            and (type(assignee) is not int or assignee not in ID_RANGE)
        ):
            raise UserError("invalid_assignee", "assignee_id must be an agent id or null")
        now = utcnow()
        async with self.db.write() as s:
            conv = await self._load(s, who, conversation_id, lock=True)
            pending: list[EventRecord] = []
            if "assignee_id" in changes and assignee != conv.assignee_id:
                if not who.is_supervisor and assignee not in (None, who.id):
                    raise UserError(
                        "forbidden", "agents can assign conversations only to themselves", status=403
                    )
                if not who.is_supervisor and assignee is None and conv.assignee_id != who.id:
                    raise UserError("forbidden", "only the assignee or a supervisor can unassign", status=403)
                if assignee is not None:
                    found = await s.execute(select(Agent.id).where(Agent.id == assignee, Agent.active))
                    if found.first() is None:
                        raise UserError("unknown_agent", f"no active agent {assignee}", status=422)
                pending += await self._assign(s, conv, assignee, who, now, reason="manual")
            if "status" in changes and status != conv.status:
                pending += await self._change_status(s, conv, str(status), who, now)
            if "priority" in changes and priority != conv.priority:
                pending.append(
                    new_event(
                        EventType.CONVERSATION_PRIORITY_CHANGED,
                        at=now,
                        conversation_id=conv.id,
                        contact_id=conv.contact_id,
                        agent_id=who.id,
                        previous=conv.priority,
                        priority=priority,
                        assignee_id=conv.assignee_id,
                    )
                )
                conv.priority = int(cast(int, priority))
            conv.updated_at = now
            events = await append_events(s, pending)
        self.bus.publish(events)
        self.assignments.wake()

    # -- split and merge ------------------------------------------------------------------------

    async def split(self, who: Principal, conversation_id: int, body: dict[str, Any]) -> int:
        """Move one message into a new open conversation of the same customer and channel, for when
        a customer raised a second matter in the same thread. Returns the new conversation's id.

        Only the named message moves (its attachments hang on it): predictable, and a message
        replying to it later still finds it, since threading goes by the message's channel id."""
        unknown = set(body) - {"message_id", "subject"}
        if unknown:
            raise UserError("unknown_field", f"unknown field {', '.join(sorted(unknown))}", status=422)
        message_id = body.get("message_id")
        if type(message_id) is not int or message_id not in ID_RANGE:
            raise UserError("invalid_message", "message_id must be a message id", status=422)
        subject = body.get("subject")
        if subject is not None and (type(subject) is not str or not subject.strip() or len(subject) > 500):
            raise UserError(
                "invalid_subject", "subject must be a non-empty string of at most 500 characters", status=422
            )
        now = utcnow()
        async with self.db.write() as s:
            conv = await self._load(s, who, conversation_id, lock=True)
            message = await s.get(Message, message_id)
            if message is None:
                raise not_found("message", message_id)
            if message.conversation_id != conv.id:
                # Whether it exists elsewhere is only told to someone who may see where it is.
                await self._load(s, who, message.conversation_id)
                raise UserError(
                    "not_in_conversation",
                    f"message {message_id} is not in conversation {conversation_id}",
                    status=422,
                )
            if message.direction == Direction.NOTE.value:
                raise UserError("invalid_message", "a private note cannot be split off", status=422)
            visible = Message.direction != Direction.NOTE.value
            others = await s.scalar(
                select(func.count())
                .select_from(Message)
                .where(Message.conversation_id == conv.id, Message.id != message.id, visible)
            )
            if not others:
                raise UserError(
                    "only_message",
                    f"message {message_id} is the only message of conversation {conversation_id}",
                    status=409,
                )
            new = Conversation(
                contact_id=conv.contact_id,
                channel=conv.channel,
                channel_kind=conv.channel_kind,
                address=conv.address,
                status=ConversationStatus.OPEN.value,
                assignee_id=None,
                priority=conv.priority,
                subject=subject.strip() if subject is not None else conv.subject,
                created_at=now,
                updated_at=now,
                last_message_at=message.created_at,
                resolved_at=None,
            )
            s.add(new)
            await s.flush()
            message.conversation_id = new.id
            await s.flush()
            latest = await s.scalar(
                select(func.max(Message.created_at)).where(Message.conversation_id == conv.id, visible)
            )
            if latest is not None:
                conv.last_message_at = latest
            conv.updated_at = now
            common: dict[str, Any] = {"at": now, "contact_id": conv.contact_id, "agent_id": who.id}
            events = await append_events(
                s,
                [
                    new_event(
                        EventType.CONVERSATION_CREATED,
                        conversation_id=new.id,
                        channel=new.channel,
                        channel_kind=new.channel_kind,
                        assignee_id=None,
                        reason="split",
                        **common,
                    ),
                    _split_event(conv.id, new.id, message.id, **common),
                ],
            )
            new_id = new.id
        self.bus.publish(events)
        self.assignments.wake()
        return new_id

    async def merge(self, who: Principal, conversation_id: int, body: dict[str, Any]) -> int:
        """Move every message of a conversation into another and close it, for when one matter was
        split over two threads (the customer wrote twice, or on two channels). Returns the target.

        The merged conversation stays, resolved and pointing at its target (``merged_into_id``), so
        its events and links keep their meaning; resolving goes through the claim path, which gives
        its assignee's capacity back and ends a queue wait."""
        unknown = set(body) - {"into"}
        if unknown:
            raise UserError("unknown_field", f"unknown field {', '.join(sorted(unknown))}", status=422)
        into = body.get("into")
        if type(into) is not int or into not in ID_RANGE:
            raise UserError("invalid_target", "into must be a conversation id", status=422)
        if into == conversation_id:
            raise UserError("merge_into_itself", "a conversation cannot be merged into itself", status=422)
        now = utcnow()
        async with self.db.write() as s:
            # Both rows locked in id order, so two opposite merges cannot deadlock.
            loaded: dict[int, Conversation | UserError] = {}
            for ident in sorted((conversation_id, into)):
                try:
                    loaded[ident] = await self._load(s, who, ident, lock=True)
                except UserError as exc:
                    loaded[ident] = exc
            source, target = loaded[conversation_id], loaded[into]
            if isinstance(source, UserError):
                raise source
            if isinstance(target, UserError):
                raise target
            for conv in (source, target):
                if conv.merged_into_id is not None:
                    raise UserError(
                        "already_merged",
                        f"conversation {conv.id} was merged into conversation {conv.merged_into_id}",
                        status=409,
                    )
            if (source.channel, source.address) != (target.channel, target.address):
                # A reply still waiting to go out is addressed through its conversation: moved, it
                # would reach the other customer.
                waiting = await s.scalar(
                    select(func.count())
                    .select_from(OutboxRow)
                    .join(Message, Message.id == OutboxRow.message_id)
                    .where(
                        Message.conversation_id == source.id,
                        OutboxRow.status.in_((OutboxStatus.PENDING, OutboxStatus.SENDING)),
                    )
                )
                if waiting:
                    raise UserError(
                        "reply_in_flight",
                        f"conversation {source.id} has a reply still being sent; merge once it has gone",
                        status=409,
                    )
            await s.execute(
                update(Message)
                .where(Message.conversation_id == source.id)
                .values(conversation_id=target.id)
                .execution_options(synchronize_session=False)
            )
            pending: list[EventRecord] = []
            source.merged_into_id = target.id
            source.updated_at = now
            target.last_message_at = max(target.last_message_at, source.last_message_at)
            target.updated_at = now
            if source.status != ConversationStatus.RESOLVED.value:
                pending += await self._change_status(
                    s, source, ConversationStatus.RESOLVED.value, who, now, reason="merged"
                )
            else:
                # Already resolved: the claim path still ends whatever routing state it holds.
                await s.flush()
                source_id = source.id
                pending += await s.run_sync(
                    lambda session: self.assignments.status_changed(
                        session, source_id, ConversationStatus.RESOLVED.value, now=now
                    )
                )
            target_id = target.id
            link = {"from": source.id, "into": target.id}
            for conv in (source, target):
                pending.append(
                    new_event(
                        EventType.CONVERSATION_MERGED,
                        at=now,
                        conversation_id=conv.id,
                        contact_id=conv.contact_id,
                        agent_id=who.id,
                        assignee_id=conv.assignee_id,
                        queue=conv.queue,
                        **link,
                    )
                )
            events = await append_events(s, pending)
        self.bus.publish(events)
        self.assignments.wake()
        return target_id


def _split_event(source: int, new: int, message_id: int, **common: Any) -> EventRecord:
    """``conversation.split``: on the new conversation, its data naming both ends and the message."""
    event = new_event(EventType.CONVERSATION_SPLIT, conversation_id=new, message_id=message_id, **common)
    return replace(event, data={"from": source, "to": new, "message_id": message_id, "assignee_id": None})


def _agent_message(
    conv: Conversation, who: Principal, direction: Direction, status: MessageStatus, text: str, now: datetime
) -> Message:
    return Message(
        conversation_id=conv.id,
        contact_id=conv.contact_id,
        channel=conv.channel,
        external_id=None,
        direction=direction.value,
        status=status.value,
        agent_id=who.id,
        sender=None,
        author_name=who.name,
        text=text,
        html=None,
        error=None,
        meta={},
        created_at=now,
    )
