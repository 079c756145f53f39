"""The durable outbox (DESIGN invariant 3).

A reply and its outbox row commit together; a dispatcher delivers each reply once, retries transient
failures with exponential back-off and jitter, marks permanent ones failed with the reason the agent
sees, cannot overwrite an outcome once its lease was taken over, and survives SIGKILL without losing
or duplicating a reply. Every test runs on SQLite and PostgreSQL and checks the rows and the event
record, not only what the channel saw.

The channel here is an in-memory recording one: the outbox is under test, not a channel adapter.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import func, select, update

from channels.base import BaseChannel
from hub.access import Principal
from hub.app import Hub
from hub.errors import PermanentError, TransientError
from hub.events import EventRecord, EventType
from hub.model import IdentityKind, InboundMessage, MessageStatus, OutboundMessage, Role, SendResult, utcnow
from hub.outbox import Dispatcher, OutboxSettings, OutboxStatus, Sender, backoff_delay
from storage.engine import Database
from storage.models import Event, Message, OutboxRow
from tests.conftest import hub_config

REPO = Path(__file__).resolve().parents[2]

Outcome = BaseException | SendResult


class RecordingChannel(BaseChannel):
    """Records every send; answers with the scripted outcomes in order, then with ``result`` (a
    SendResult, or a function of the message).

    With ``gate`` set, a send is recorded and then waits for the gate before answering, so a test can
    act while a dispatcher is inside ``send``.
    """

    kind: ClassVar[str] = "webchat"

    def __init__(
        self,
        outcomes: Sequence[Outcome] = (),
        result: SendResult | Callable[[OutboundMessage], SendResult] | None = None,
        *,
        gate: asyncio.Event | None = None,
        pause: float = 0.0,
    ) -> None:
        super().__init__("webchat", {})
        self.outcomes = list(outcomes)
        self.result = result or SendResult()
        self.gate = gate
        self.pause = pause
        self.sent: list[OutboundMessage] = []

    async def send(self, msg: OutboundMessage) -> SendResult:
        self.sent.append(msg)
        if self.gate is not None:
            await self.gate.wait()
        if self.pause:
            await asyncio.sleep(self.pause)
        if not self.outcomes:
            return self.result(msg) if callable(self.result) else self.result
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def counts(self) -> Counter[int]:
        return Counter(m.message_id for m in self.sent)


@pytest.fixture
async def hub(tmp_path: Path, db_url: str) -> AsyncIterator[Hub]:
    """A migrated hub whose own dispatcher is not running and whose web-chat channel records sends."""
    async with Hub(hub_config(tmp_path, db_url), start_channels=False) as running:
        running.channels["webchat"] = RecordingChannel()
        yield running


@pytest.fixture
async def agent(hub: Hub) -> Principal:
    return await hub.accounts.add("ada@example.com", "Ada Agent", Role.AGENT, "password-ada-long")


async def open_conversation(hub: Hub, visitor: str = "v-1") -> int:
    result = await hub.ingest(
        InboundMessage(
            channel="webchat",
            channel_kind="webchat",
            external_id=f"{visitor}:c1",
            identity_kind=IdentityKind.WEBCHAT,
            sender=visitor,
            text="hi",
        )
    )
    return result.conversation_id


async def reply(hub: Hub, who: Principal, conversation_id: int, text: str = "Hello, how can I help?") -> int:
    return int((await hub.conversations.reply(who, conversation_id, text))["message"]["id"])


def make_dispatcher(
    hub: Hub,
    channels: Mapping[str, Sender],
    *,
    db: Database | None = None,
    worker_id: str | None = None,
    **settings: Any,
) -> Dispatcher:
    """A dispatcher driven by the test (``run_once``), with back-off long enough never to elapse by itself."""
    options: dict[str, Any] = {"base_delay": 10.0, "max_delay": 1000.0, "lease": 30.0, **settings}
    return Dispatcher(db or hub.db, hub.bus, lambda: channels, OutboxSettings(**options), worker_id)


async def outbox_row(db: Database, message_id: int) -> OutboxRow:
    async with db.read() as s:
        return (await s.execute(select(OutboxRow).where(OutboxRow.message_id == message_id))).scalar_one()


async def message_row(db: Database, message_id: int) -> Message:
    async with db.read() as s:
        return (await s.execute(select(Message).where(Message.id == message_id))).scalar_one()


async def events_of(db: Database, message_id: int) -> list[Event]:
    async with db.read() as s:
        query = select(Event).where(Event.message_id == message_id).order_by(Event.id)
        return list((await s.execute(query)).scalars())


def types(events: Sequence[Event]) -> list[str]:
    return [e.type for e in events]


async def skip_backoff(db: Database, message_id: int) -> None:
    """Travel past the row's back-off, whatever its status."""
    async with db.write() as s:
        await s.execute(
            update(OutboxRow)
            .where(OutboxRow.message_id == message_id)
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )


async def expire_lease(db: Database, message_id: int) -> None:
    async with db.write() as s:
        await s.execute(
            update(OutboxRow)
            .where(OutboxRow.message_id == message_id)
            .values(claimed_until=utcnow() - timedelta(seconds=1))
        )


async def all_rows_are(db: Database, ids: Sequence[int], status: str) -> bool:
    async with db.read() as s:
        found = await s.execute(
            select(func.count()).where(OutboxRow.message_id.in_(ids), OutboxRow.status == status)
        )
        return found.scalar_one() == len(ids)


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], *, within: float = 10.0, what: str = ""
) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await _value(check()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.02)


async def _value(answer: bool | Awaitable[bool]) -> bool:
    return await answer if inspect.isawaitable(answer) else answer


async def next_event(live: asyncio.Queue[EventRecord | None], type: str, message_id: int) -> EventRecord:
    async with asyncio.timeout(10):
        while True:
            event = await live.get()
            assert event is not None, "the test fell behind the event bus"
            if event.type == type and event.message_id == message_id:
                return event


# -- delivered once --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("external_id", "delivered", "status", "expected_events"),
    [
        pytest.param(
            True, False, MessageStatus.SENT, [EventType.MESSAGE_QUEUED, EventType.MESSAGE_SENT], id="sent"
        ),
        pytest.param(
            True,
            True,
            MessageStatus.DELIVERED,
            [EventType.MESSAGE_QUEUED, EventType.MESSAGE_SENT, EventType.MESSAGE_DELIVERED],
            id="delivered",
        ),
        pytest.param(
            False, False, MessageStatus.SENT, [EventType.MESSAGE_QUEUED, EventType.MESSAGE_SENT], id="no-id"
        ),
    ],
)
async def test_reply_is_committed_with_its_row_and_delivered_once(
    hub: Hub,
    agent: Principal,
    external_id: bool,
    delivered: bool,
    status: MessageStatus,
    expected_events: list[str],
) -> None:
    def result(msg: OutboundMessage) -> SendResult:
        return SendResult(f"wc-{msg.message_id}" if external_id else None, delivered)

    channel = RecordingChannel(result=result)
    hub.channels["webchat"] = channel
    conversation_id = await open_conversation(hub)

    # Committed together, before any dispatcher ran.
    message_id = await reply(hub, agent, conversation_id, "Your order ships today.")
    row = await outbox_row(hub.db, message_id)
    assert (row.status, row.attempts, row.channel, row.claimed_by) == (
        OutboxStatus.PENDING,
        0,
        "webchat",
        None,
    )
    assert (await message_row(hub.db, message_id)).status == MessageStatus.QUEUED
    assert types(await events_of(hub.db, message_id)) == [EventType.MESSAGE_QUEUED]

    # The hub's own dispatcher, polling so rarely that only the reply's wake-up can make it deliver.
    hub.dispatcher.settings.poll_interval = 60.0
    hub.dispatcher.start()
    async with hub.bus.subscribe() as live:
        second_id = await reply(hub, agent, conversation_id, "Anything else?")
        await next_event(live, EventType.MESSAGE_SENT, second_id)
    await hub.dispatcher.stop()

    assert channel.counts() == {message_id: 1, second_id: 1}
    sent = next(m for m in channel.sent if m.message_id == message_id)
    assert (sent.conversation_id, sent.channel, sent.recipient) == (conversation_id, "webchat", "v-1")
    assert (sent.text, sent.author_name) == ("Your order ships today.", "Ada Agent")
    for mid in (message_id, second_id):
        row = await outbox_row(hub.db, mid)
        assert (row.status, row.attempts, row.last_error, row.claimed_until) == (
            OutboxStatus.SENT,
            1,
            None,
            None,
        )
        message = await message_row(hub.db, mid)
        ours = f"wc-{mid}" if external_id else None
        assert (message.status, message.external_id, message.error) == (status, ours, None)
        events = await events_of(hub.db, mid)
        assert types(events) == expected_events
        assert events[1].data["attempts"] == 1 and events[1].data["external_id"] == ours
        assert all(e.conversation_id == conversation_id for e in events)
    # Nothing is ever due again.
    assert await make_dispatcher(hub, {"webchat": channel}).run_once() == 0
    assert len(channel.sent) == 2


async def test_wake_up_during_an_idle_pass_is_not_lost(hub: Hub, agent: Principal) -> None:
    """A reply committed after a pass looked for due rows, but before the dispatcher went back to
    sleep, must still wake it; otherwise it waits a whole poll interval (here a minute)."""
    channel = RecordingChannel()
    conversation_id = await open_conversation(hub)
    replied: list[int] = []

    class ReplyAtTheEndOfAnIdlePass(Dispatcher):
        async def run_once(self) -> int:
            handled = await super().run_once()
            if not handled and not replied:
                replied.append(await reply(hub, agent, conversation_id))  # commits, then wakes us
            return handled

    dispatcher = ReplyAtTheEndOfAnIdlePass(
        hub.db, hub.bus, lambda: {"webchat": channel}, OutboxSettings(poll_interval=60.0)
    )
    hub.conversations.wake_outbox = dispatcher.wake

    async def replied_and_sent() -> bool:
        return bool(replied) and await all_rows_are(hub.db, replied, OutboxStatus.SENT)

    dispatcher.start()
    try:
        await eventually(replied_and_sent, within=5, what="sent without waiting for the poll")
    finally:
        await dispatcher.stop()
    assert channel.counts() == {replied[0]: 1}
    assert (await outbox_row(hub.db, replied[0])).status == OutboxStatus.SENT
    assert types(await events_of(hub.db, replied[0])) == [EventType.MESSAGE_QUEUED, EventType.MESSAGE_SENT]


async def test_channel_id_already_taken_does_not_undo_a_delivery(hub: Hub, agent: Principal) -> None:
    """``(channel, external_id)`` is ingest's idempotency key, so a channel id can already belong to
    another message (say the mailbox copy of a sent email, ingested first). The delivery still counts:
    were its outcome rolled back, the row would stay claimed and the reply be re-sent every lease."""
    conversation_id = await open_conversation(hub)
    channel = RecordingChannel(result=SendResult(external_id="v-1:c1"))  # the visitor's first message
    dispatcher = make_dispatcher(hub, {"webchat": channel})
    message_id = await reply(hub, agent, conversation_id)

    assert await dispatcher.run_once() == 1
    row = await outbox_row(hub.db, message_id)
    assert (row.status, row.attempts, row.claimed_until) == (OutboxStatus.SENT, 1, None)
    message = await message_row(hub.db, message_id)
    assert (message.status, message.external_id) == (MessageStatus.SENT, None)
    events = await events_of(hub.db, message_id)
    assert types(events) == [EventType.MESSAGE_QUEUED, EventType.MESSAGE_SENT]
    assert events[1].data["external_id"] == "v-1:c1"
    await expire_lease(hub.db, message_id)
    assert await dispatcher.run_once() == 0
    assert channel.counts() == {message_id: 1}


# -- transient failures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempts", "ceiling"),
    [(0, 2.0), (1, 2.0), (2, 4.0), (3, 8.0), (6, 64.0), (9, 512.0), (10, 900.0), (11, 900.0), (5000, 900.0)],
)
def test_backoff_delay_is_jittered_between_half_and_full_capped_ceiling(
    attempts: int, ceiling: float
) -> None:
    # A pure function: no database, so it runs once rather than once per database.
    settings = OutboxSettings(base_delay=2.0, max_delay=900.0)
    rng = random.Random(attempts)
    delays = [backoff_delay(attempts, settings, rng) for _ in range(500)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    # Jitter spreads retries over the whole band instead of synchronising them.
    assert min(delays) < ceiling * 0.55 and max(delays) > ceiling * 0.95
    again = random.Random(attempts)
    assert delays == [backoff_delay(attempts, settings, again) for _ in range(500)]


async def test_transient_failures_retry_with_growing_jittered_backoff(hub: Hub, agent: Principal) -> None:
    errors = [TransientError(f"gateway timeout #{n}") for n in range(1, 5)]
    channel = RecordingChannel(errors, SendResult(external_id="wc-9"))
    dispatcher = make_dispatcher(hub, {"webchat": channel}, base_delay=10.0, max_delay=1000.0)
    message_id = await reply(hub, agent, await open_conversation(hub))

    delays = []
    for attempt in range(1, len(errors) + 1):
        assert await dispatcher.run_once() == 1
        row = await outbox_row(hub.db, message_id)
        assert (row.status, row.attempts, row.claimed_by, row.claimed_until) == (
            OutboxStatus.PENDING,
            attempt,
            None,
            None,
        )
        assert row.last_error == f"gateway timeout #{attempt}"
        delay = (row.next_attempt_at - row.updated_at).total_seconds()
        ceiling = 10.0 * 2 ** (attempt - 1)
        assert ceiling / 2 - 0.001 <= delay <= ceiling + 0.001
        delays.append(delay)
        assert (await message_row(hub.db, message_id)).status == MessageStatus.QUEUED
        # Not due before its back-off has passed.
        assert await dispatcher.run_once() == 0
        await skip_backoff(hub.db, message_id)
    assert delays == sorted(delays)

    assert await dispatcher.run_once() == 1
    assert channel.counts() == {message_id: len(errors) + 1}
    row = await outbox_row(hub.db, message_id)
    assert (row.status, row.attempts, row.last_error) == (OutboxStatus.SENT, len(errors) + 1, None)
    message = await message_row(hub.db, message_id)
    assert (message.status, message.external_id, message.error) == (MessageStatus.SENT, "wc-9", None)
    events = await events_of(hub.db, message_id)
    assert types(events) == [EventType.MESSAGE_QUEUED] + [EventType.MESSAGE_RETRYING] * len(errors) + [
        EventType.MESSAGE_SENT
    ]
    retrying = events[1:-1]
    assert [e.data["error"] for e in retrying] == [str(e) for e in errors]
    assert [e.data["attempts"] for e in retrying] == [1, 2, 3, 4]
    assert [e.data["retry_in_s"] for e in retrying] == pytest.approx(delays, abs=0.001)
    assert events[-1].data["attempts"] == len(errors) + 1


@pytest.mark.parametrize("retry_after", [30.0, 0.0])
async def test_transient_retry_after_overrides_backoff(
    hub: Hub, agent: Principal, retry_after: float
) -> None:
    channel = RecordingChannel([TransientError("429 slow down", retry_after=retry_after)])
    dispatcher = make_dispatcher(hub, {"webchat": channel}, base_delay=500.0, max_delay=1000.0)
    message_id = await reply(hub, agent, await open_conversation(hub))

    assert await dispatcher.run_once() == 1
    row = await outbox_row(hub.db, message_id)
    assert (row.status, row.attempts, row.last_error) == (OutboxStatus.PENDING, 1, "429 slow down")
    assert (row.next_attempt_at - row.updated_at).total_seconds() == pytest.approx(retry_after, abs=0.001)
    retrying = (await events_of(hub.db, message_id))[-1]
    assert retrying.type == EventType.MESSAGE_RETRYING
    assert retrying.data["retry_in_s"] == retry_after and retrying.data["error"] == "429 slow down"

    # Due exactly when the remote side said: at once for 0, not yet for 30 s.
    assert await dispatcher.run_once() == (1 if retry_after == 0 else 0)
    assert len(channel.sent) == (2 if retry_after == 0 else 1)


# -- failures --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "outcomes", "max_attempts", "sends", "reason"),
    [
        pytest.param(
            {"webchat"},
            [PermanentError("the visitor closed the chat for good")],
            10,
            1,
            "the visitor closed the chat for good",
            id="permanent",
        ),
        pytest.param(
            {"webchat"},
            [TransientError("gateway timeout") for _ in range(3)],
            3,
            3,
            "gave up after 3 attempts: gateway timeout",
            id="attempts-exhausted",
        ),
        pytest.param(
            {"webchat"},
            [RuntimeError("adapter bug") for _ in range(2)],
            2,
            2,
            "gave up after 2 attempts: RuntimeError('adapter bug')",
            id="unexpected-error-exhausted",
        ),
        pytest.param(
            {"support-mail"},
            [],
            10,
            0,
            "channel 'webchat' is not configured on this hub",
            id="unknown-channel",
        ),
    ],
)
async def test_failed_reply_records_the_reason_and_is_never_retried(
    hub: Hub,
    agent: Principal,
    channels: set[str],
    outcomes: list[Outcome],
    max_attempts: int,
    sends: int,
    reason: str,
) -> None:
    channel = RecordingChannel(outcomes)
    dispatcher = make_dispatcher(hub, dict.fromkeys(channels, channel), max_attempts=max_attempts)
    conversation_id = await open_conversation(hub)
    message_id = await reply(hub, agent, conversation_id)

    passes = 0
    while (await outbox_row(hub.db, message_id)).status != OutboxStatus.FAILED:
        assert passes < max_attempts, "still not failed after max_attempts passes"
        assert await dispatcher.run_once() == 1
        await skip_backoff(hub.db, message_id)
        passes += 1

    attempts = max(sends, 1)
    assert passes == attempts
    row = await outbox_row(hub.db, message_id)
    assert (row.status, row.attempts, row.last_error) == (OutboxStatus.FAILED, attempts, reason)
    message = await message_row(hub.db, message_id)
    assert (message.status, message.error) == (MessageStatus.FAILED, reason)
    events = await events_of(hub.db, message_id)
    assert types(events) == [EventType.MESSAGE_QUEUED] + [EventType.MESSAGE_RETRYING] * (attempts - 1) + [
        EventType.MESSAGE_FAILED
    ]
    assert events[-1].data["error"] == reason and events[-1].data["attempts"] == attempts
    # What the agent sees in the conversation.
    shown = (await hub.timeline.conversation(agent, conversation_id))["messages"]
    assert [(m["status"], m["error"]) for m in shown if m["id"] == message_id] == [("failed", reason)]

    # Never claimed again, even with its next attempt time long past and every channel configured.
    await skip_backoff(hub.db, message_id)
    assert await make_dispatcher(hub, {"webchat": channel, "support-mail": channel}).run_once() == 0
    assert len(channel.sent) == sends


# -- fencing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stale_first", [False, True], ids=["owner-finishes-first", "stale-finishes-first"])
@pytest.mark.parametrize(
    "late",
    [
        SendResult(external_id="stale-1", delivered=True),
        PermanentError("stale refusal"),
        TransientError("stale"),
    ],
    ids=["late-success", "late-permanent", "late-transient"],
)
async def test_dispatcher_whose_lease_was_taken_over_cannot_overwrite_the_outcome(
    hub: Hub, agent: Principal, late: Outcome, stale_first: bool
) -> None:
    stale_gate, owner_gate = asyncio.Event(), asyncio.Event()
    stale_channel = RecordingChannel([late], gate=stale_gate)
    owner_channel = RecordingChannel(result=SendResult(external_id="owner-1"), gate=owner_gate)
    stale = make_dispatcher(hub, {"webchat": stale_channel}, worker_id="dispatcher-a")
    owner = make_dispatcher(hub, {"webchat": owner_channel}, worker_id="dispatcher-b")
    message_id = await reply(hub, agent, await open_conversation(hub))

    stale_pass = asyncio.create_task(stale.run_once())
    await eventually(lambda: bool(stale_channel.sent), what="A is inside send")
    row = await outbox_row(hub.db, message_id)
    assert (row.status, row.claimed_by) == (OutboxStatus.SENDING, "dispatcher-a")

    # A's lease runs out while it is still inside send; B takes the row over.
    await expire_lease(hub.db, message_id)
    owner_pass = asyncio.create_task(owner.run_once())
    await eventually(lambda: bool(owner_channel.sent), what="B is inside send")
    assert (await outbox_row(hub.db, message_id)).claimed_by == "dispatcher-b"

    first, second = (stale_gate, owner_gate) if stale_first else (owner_gate, stale_gate)
    first_pass, second_pass = (stale_pass, owner_pass) if stale_first else (owner_pass, stale_pass)
    first.set()
    assert await first_pass == 1
    if stale_first:
        # B still owns the row: A's outcome changed nothing.
        row = await outbox_row(hub.db, message_id)
        assert (row.status, row.claimed_by, row.attempts) == (OutboxStatus.SENDING, "dispatcher-b", 2)
        assert (await message_row(hub.db, message_id)).status == MessageStatus.QUEUED
    else:
        settled = await outbox_row(hub.db, message_id)
    second.set()
    assert await second_pass == 1

    row = await outbox_row(hub.db, message_id)
    # A's claim and B's takeover are two attempts.
    assert (row.status, row.claimed_by, row.attempts, row.last_error) == (
        OutboxStatus.SENT,
        "dispatcher-b",
        2,
        None,
    )
    if not stale_first:
        assert row.updated_at == settled.updated_at and row.next_attempt_at == settled.next_attempt_at
    message = await message_row(hub.db, message_id)
    assert (message.status, message.external_id, message.error) == (MessageStatus.SENT, "owner-1", None)
    events = await events_of(hub.db, message_id)
    assert types(events) == [EventType.MESSAGE_QUEUED, EventType.MESSAGE_SENT]
    assert events[1].data["external_id"] == "owner-1"
    # The one duplicate a lease cannot prevent: A's send had reached the channel before it lost the lease.
    assert len(stale_channel.sent) == len(owner_channel.sent) == 1


# -- crash resume ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode",
    ["claimed", "committed"],
    ids=["killed-between-claim-and-send", "killed-between-commit-and-claim"],
)
async def test_replies_survive_sigkill_and_are_sent_exactly_once(
    hub: Hub, agent: Principal, db_url: str, mode: str
) -> None:
    conversation_id = await open_conversation(hub)
    count, child_lease = 3, 1.5
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.hub.outbox_crash_child",
        db_url,
        str(hub.config.data_dir),
        str(agent.id),
        str(conversation_id),
        str(count),
        mode,
        str(child_lease),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            line = (await child.stdout.readline()).decode()  # type: ignore[union-attr]
        if not line.startswith("committed"):
            problem = (await child.stderr.read()).decode()  # type: ignore[union-attr]
            pytest.fail(f"the child hub failed before committing: {line}{problem}")
        ids = [int(i) for i in line.split()[1:]]
        assert len(ids) == count
        expected = OutboxStatus.SENDING if mode == "claimed" else OutboxStatus.PENDING
        await eventually(lambda: all_rows_are(hub.db, ids, expected), what=f"rows {expected}")
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGKILL)
        await child.wait()
        await child.stdout.read()  # type: ignore[union-attr]
        await child.stderr.read()  # type: ignore[union-attr]
    assert child.returncode == -signal.SIGKILL

    channel = RecordingChannel()
    dispatcher = make_dispatcher(hub, {"webchat": channel}, lease=1.0)
    if mode == "claimed":
        # The dead process's lease still holds: nobody may send these yet.
        rows = [await outbox_row(hub.db, message_id) for message_id in ids]
        leases = [row.claimed_until for row in rows if row.claimed_until is not None]
        assert len(leases) == count and all(row.claimed_by for row in rows)
        if min(leases) > utcnow() + timedelta(seconds=0.3):
            assert await dispatcher.run_once() == 0

    async def delivered() -> bool:
        await dispatcher.run_once()
        return await all_rows_are(hub.db, ids, OutboxStatus.SENT)

    await eventually(delivered, within=child_lease + 5, what="replies of the killed hub sent")
    for _ in range(3):  # and nothing more, however often the dispatcher looks
        assert await dispatcher.run_once() == 0
    assert channel.counts() == dict.fromkeys(ids, 1)
    assert sorted(m.text for m in channel.sent) == [f"reply {n}" for n in range(count)]
    for message_id in ids:
        row = await outbox_row(hub.db, message_id)
        # The attempt the killed child claimed counts: attempts are spent when claimed, so a reply whose
        # sending kills the process runs out of attempts instead of looping for ever.
        tries = 2 if mode == "claimed" else 1
        assert (row.status, row.attempts, row.claimed_by) == (OutboxStatus.SENT, tries, dispatcher.worker_id)
        assert (await message_row(hub.db, message_id)).status == MessageStatus.SENT
        assert types(await events_of(hub.db, message_id)) == [
            EventType.MESSAGE_QUEUED,
            EventType.MESSAGE_SENT,
        ]


# -- concurrency -----------------------------------------------------------------------------------


async def test_two_dispatchers_deliver_every_reply_exactly_once(
    hub: Hub, agent: Principal, db_url: str
) -> None:
    """Two dispatchers as two hub processes run them (own engines, own worker ids, one database)
    drain 200 replies that agents write on four conversations while the dispatchers are running."""
    conversations = [await open_conversation(hub, f"v-{n}") for n in range(4)]
    channels = [RecordingChannel(pause=0.001), RecordingChannel(pause=0.001)]
    databases = [Database(db_url), Database(db_url)]
    dispatchers = [
        make_dispatcher(hub, {"webchat": ch}, db=db, worker_id=f"node-{n}", batch=10, poll_interval=0.01)
        for n, (ch, db) in enumerate(zip(channels, databases, strict=True))
    ]
    ids: list[int] = []

    async def write_replies(conversation_id: int) -> None:
        for n in range(50):
            ids.append(await reply(hub, agent, conversation_id, f"reply {n}"))
            for d in dispatchers:
                d.wake()

    try:
        for d in dispatchers:
            d.start()
        await asyncio.gather(*(write_replies(c) for c in conversations))
        await eventually(lambda: all_rows_are(hub.db, ids, OutboxStatus.SENT), within=60, what="all 200 sent")
    finally:
        for d in dispatchers:
            await d.stop()
        for db in databases:
            await db.dispose()

    assert len(set(ids)) == 200
    sends = channels[0].counts() + channels[1].counts()
    assert sends == dict.fromkeys(ids, 1)
    assert all(ch.sent for ch in channels), "one dispatcher did all the work: nothing ran concurrently"
    async with hub.db.read() as s:
        sent_events = Counter(
            (await s.execute(select(Event.message_id).where(Event.type == EventType.MESSAGE_SENT))).scalars()
        )
        owners = Counter(
            (await s.execute(select(OutboxRow.claimed_by).where(OutboxRow.message_id.in_(ids)))).scalars()
        )
    assert sent_events == dict.fromkeys(ids, 1)
    assert owners == {"node-0": len(channels[0].sent), "node-1": len(channels[1].sent)}


# -- liveness and order ------------------------------------------------------------------------


async def test_a_send_that_never_answers_times_out_as_a_transient_failure(hub: Hub, agent: Principal) -> None:
    channel = RecordingChannel(gate=asyncio.Event())  # never released
    dispatcher = make_dispatcher(hub, {"webchat": channel}, send_timeout=0.2)
    message_id = await reply(hub, agent, await open_conversation(hub))
    assert await dispatcher.run_once() == 1
    row = await outbox_row(hub.db, message_id)
    assert (row.status, row.attempts) == (OutboxStatus.PENDING, 1)
    assert row.last_error == "no answer from the channel within 0.2 s"


async def test_replies_in_one_conversation_leave_in_the_order_written(hub: Hub, agent: Principal) -> None:
    conversations = [await open_conversation(hub, f"v-{n}") for n in range(3)]
    written: dict[int, list[int]] = {c: [] for c in conversations}
    for n in range(5):
        for c in conversations:
            written[c].append(await reply(hub, agent, c, f"part {n}"))
    # Later parts answer faster: concurrent delivery inside a conversation would reorder them.
    channel = RecordingChannel(pause=0.0)
    original = channel.send

    async def slower_for_earlier(msg: OutboundMessage) -> SendResult:
        await asyncio.sleep(0.05 * (5 - int(msg.text.split()[-1])) / 5)
        return await original(msg)

    channel.send = slower_for_earlier  # type: ignore[method-assign]
    dispatcher = make_dispatcher(hub, {"webchat": channel})
    assert await dispatcher.run_once() == 15
    for c in conversations:
        assert [m.message_id for m in channel.sent if m.conversation_id == c] == written[c]


async def test_a_reply_whose_sending_keeps_killing_the_process_fails_after_max_attempts(
    hub: Hub, agent: Principal
) -> None:
    """Attempts are spent when claimed: a claim whose dispatcher never finishes still counts."""
    message_id = await reply(hub, agent, await open_conversation(hub))
    for n in range(3):  # three dispatchers that claim and "die" inside send
        dying = make_dispatcher(hub, {"webchat": RecordingChannel(gate=asyncio.Event())}, worker_id=f"d{n}")
        task = asyncio.create_task(dying.run_once())
        worker = f"d{n}"
        await eventually(lambda w=worker: _claimed_by(hub.db, message_id, w), what=f"{worker} claimed")
        task.cancel()
        await expire_lease(hub.db, message_id)
    survivor = RecordingChannel()
    dispatcher = make_dispatcher(hub, {"webchat": survivor}, max_attempts=3)
    assert await dispatcher.run_once() == 1
    assert survivor.sent == []
    row = await outbox_row(hub.db, message_id)
    assert row.status == OutboxStatus.FAILED
    assert row.last_error == "gave up after 3 attempts that never finished"
    assert (await message_row(hub.db, message_id)).status == MessageStatus.FAILED


async def _claimed_by(db: Database, message_id: int, worker: str) -> bool:
    return (await outbox_row(db, message_id)).claimed_by == worker


async def test_retry_after_is_capped_by_max_delay(hub: Hub, agent: Principal) -> None:
    channel = RecordingChannel([TransientError("slow down", retry_after=1e12)])
    dispatcher = make_dispatcher(hub, {"webchat": channel}, max_delay=120.0)
    message_id = await reply(hub, agent, await open_conversation(hub))
    before = utcnow()
    assert await dispatcher.run_once() == 1
    row = await outbox_row(hub.db, message_id)
    assert row.status == OutboxStatus.PENDING
    assert timedelta(seconds=119) < row.next_attempt_at - before < timedelta(seconds=122)
