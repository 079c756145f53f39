"""The inbound loop of one IMAP mailbox (RFC 3501; IDLE RFC 2177; MOVE RFC 6851; UIDPLUS RFC 4315).

:class:`ImapReceiver` knows nothing of the hub: it is given a :class:`CursorStore` (where it stopped)
and a ``deliver(uid, raw)`` sink that returns only once the message is committed. Contract:

- The cursor is ``"UIDVALIDITY:UID"`` of the highest message the sink has committed (or refused for
  good with :class:`~hub.errors.IngestRefused`). A fetched batch is delivered concurrently (ingest
  commits it in few transactions) and the cursor saved after it, never before: a crash replays at
  most the batch in flight, and ingest dedupes it. A failure stops the cursor below the failed UID.
- Another UIDVALIDITY than the cursor's means the server renumbered the mailbox: everything is
  delivered again from UID 1 (ingest dedupes by Message-ID).
- Any other failure of the sink, and any connection error, drops the connection and retries after
  an exponential back-off with jitter; the cursor stays where it was.
- New mail is pushed by IDLE, re-issued every ``idle_seconds`` (RFC 2177 section 3: servers may drop
  an IDLE after 30 minutes); without IDLE the mailbox is polled every ``poll_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import aioimaplib

from hub.errors import IngestRefused

log = logging.getLogger(__name__)

Deliver = Callable[[int, bytes], Awaitable[None]]

_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)")
_FETCH_START = re.compile(rb"\d+ FETCH \(")
_UID_ITEM = re.compile(rb"UID (\d+)")
_EXISTS = re.compile(rb"(\* )?\d+ EXISTS")
_ASTRING = re.compile(r"[A-Za-z0-9_./-]+")


class CursorStore(Protocol):
    """Where each mailbox stopped; the hub backs it with its channel_cursors table."""

    async def load(self, key: str) -> str | None: ...

    async def save(self, key: str, value: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ImapSettings:
    host: str
    port: int
    user: str
    # Never shown in repr, logs or tracebacks.
    password: str = field(repr=False)
    folder: str = "INBOX"
    # Implicit TLS (RFC 8314); aioimaplib has no STARTTLS, so plaintext is for loopback only.
    tls: bool = False
    # None with tls: the system's CAs and hostname check.
    ssl_context: ssl.SSLContext | None = None
    # UIDs fetched per UID FETCH command while catching up.
    batch: int = 200
    # Seconds before an IDLE is ended and re-issued; below 29 minutes (RFC 2177).
    idle_seconds: float = 25 * 60
    # Seconds between checks when the server lacks IDLE.
    poll_seconds: float = 30.0
    # Reconnect back-off: first delay and cap, seconds; each delay is drawn from [d/2, d].
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    # Seconds for connecting and for each IMAP command.
    timeout: float = 30.0
    # After a message is committed: "none", "seen" (set \\Seen) or "move:<folder>".
    after_commit: str = "none"

    def __post_init__(self) -> None:
        if self.after_commit not in ("none", "seen") and not (
            self.after_commit.startswith("move:") and len(self.after_commit) > len("move:")
        ):
            raise ValueError(f"after_commit must be none, seen or move:<folder>, not {self.after_commit!r}")
        if self.batch < 1:
            raise ValueError("batch must be at least 1")
        if not 0 < self.idle_seconds < 29 * 60:
            raise ValueError("idle_seconds must be positive and below 29 minutes (RFC 2177)")


class ConnectionLost(ConnectionError):
    """The server closed the connection (BYE, restart, network)."""


class DeliveryFailed(Exception):
    """The sink failed for a reason other than IngestRefused: retry the same message later."""


@dataclass(frozen=True, slots=True)
class Cursor:
    uidvalidity: int
    uid: int

    @classmethod
    def parse(cls, value: str | None) -> Cursor | None:
        if not value:
            return None
        validity, _, uid = value.partition(":")
        try:
            return cls(int(validity), int(uid))
        except ValueError:
            log.warning("ignoring malformed IMAP cursor %r", value)
            return None

    def __str__(self) -> str:
        return f"{self.uidvalidity}:{self.uid}"


def mailbox_arg(name: str) -> str:
    """A mailbox name as an IMAP astring (aioimaplib sends arguments verbatim)."""
    return name if _ASTRING.fullmatch(name) else aioimaplib.quoted(name)


def parse_uid_search(lines: list[Any]) -> list[int]:
    """UIDs of a UID SEARCH response. aioimaplib strips the ``SEARCH`` word of the untagged reply;
    the last line is the tagged OK's text."""
    uids: list[int] = []
    for line in lines[:-1]:
        words = bytes(line).split()
        if words[:1] == [b"SEARCH"]:
            words = words[1:]
        if words and all(w.isdigit() for w in words):
            uids.extend(int(w) for w in words)
    return sorted(set(uids))


def parse_uid_fetch(lines: list[Any]) -> dict[int, bytes]:
    """UID -> literal of a ``UID FETCH (UID BODY.PEEK[])`` response. aioimaplib gives each message as
    its ``n FETCH (...{size}`` line, the literal (a bytearray) and the closing line; the UID item may
    come before or after the literal. Unsolicited FETCHes (flag changes) carry no literal: skipped."""
    found: dict[int, bytes] = {}
    uid: int | None = None
    body: bytes | None = None

    def flush() -> None:
        if uid is not None and body is not None:
            found[uid] = body

    for line in lines:
        if isinstance(line, bytearray):
            body = bytes(line)
            continue
        if _FETCH_START.match(line):
            flush()
            uid, body = None, None
        match = _UID_ITEM.search(line)
        if match and uid is None:
            uid = int(match.group(1))
    flush()
    return found


def _uid_ranges(uids: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(uids), size):
        yield uids[start : start + size]


class ImapReceiver:
    """Delivers every message of one mailbox folder once, in UID order, and keeps doing so."""

    def __init__(
        self,
        settings: ImapSettings,
        cursors: CursorStore,
        deliver: Deliver,
        *,
        key: str | None = None,
    ) -> None:
        self.settings = settings
        self.cursors = cursors
        self.deliver = deliver
        # The cursor's key and the name in logs (no password, no message addresses).
        self.key = key or f"{settings.user}@{settings.host}:{settings.port}/{settings.folder}"
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._woken = False
        self._wake_event = asyncio.Event()
        self._client: aioimaplib.IMAP4 | None = None
        self._lost = False
        self._exists_seen = False
        self.connections = 0  # successful logins, for tests and metrics

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"mailbox {self.key}: already started")
        self._stopping.clear()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"imap:{self.key}")

    async def stop(self, grace: float = 10.0) -> None:
        """End IDLE, LOGOUT and close; the message being delivered is finished first (up to
        ``grace`` seconds, then cancelled: its cursor is simply not advanced)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        self.wake()
        try:
            await asyncio.wait_for(asyncio.shield(task), grace)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> ImapReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def wake(self) -> None:
        """Check the mailbox now (ends a poll wait or an IDLE)."""
        self._woken = True
        self._wake_event.set()
        self._interrupt_idle()

    def _interrupt_idle(self) -> None:
        client = self._client
        if client is not None and client.protocol is not None:
            client.protocol.idle_queue.put_nowait(aioimaplib.STOP_WAIT_SERVER_PUSH)

    # -- the loop ----------------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.settings.backoff_base
        while not self._stopping.is_set():
            synced = False
            try:
                client = await self._connect()
                try:
                    async for _ in self._session(client):
                        synced = True
                        delay = self.settings.backoff_base
                finally:
                    await self._close(client)
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, aioimaplib.AioImapException, DeliveryFailed) as exc:
                log.warning("mailbox %s: %s; retrying in about %.1f s", self.key, exc or type(exc), delay)
            except Exception:
                log.exception("mailbox %s: unexpected error; retrying in about %.1f s", self.key, delay)
            if self._stopping.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), random.uniform(delay / 2, delay))
            if not synced:
                delay = min(self.settings.backoff_max, delay * 2)

    async def _connect(self) -> aioimaplib.IMAP4:
        s = self.settings
        self._lost = False
        client: aioimaplib.IMAP4
        if s.tls:
            client = aioimaplib.IMAP4_SSL(s.host, s.port, timeout=s.timeout, ssl_context=s.ssl_context)
        else:
            client = aioimaplib.IMAP4(s.host, s.port, timeout=s.timeout)
        # Without this a dead connection is only noticed at the next command's timeout.
        client.protocol.conn_lost_cb = self._connection_lost
        self._watch_exists(client)
        self._client = client
        try:
            await client.wait_hello_from_server()
            response = await client.login(s.user, s.password)
            if response.result != "OK":
                raise aioimaplib.Error(f"LOGIN refused: {_text(response)}")
        except BaseException:
            self._client = None
            _close_transport(client)
            raise
        self.connections += 1
        return client

    def _watch_exists(self, client: aioimaplib.IMAP4) -> None:
        """Note every untagged EXISTS. A server reports new mail at the end of any command (RFC 3501
        section 7.3.1), e.g. after the results of the UID SEARCH that did not include it; it will
        not report it again in IDLE, and aioimaplib drops such lines. So a catch-up is repeated
        until none of its commands saw an EXISTS. (Hooks aioimaplib 2.0's protocol method.)"""
        protocol = client.protocol
        original = protocol._untagged_response

        def untagged(line: bytes) -> Any:
            if _EXISTS.match(line):
                self._exists_seen = True
            return original(line)

        protocol._untagged_response = untagged

    def _connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._interrupt_idle()

    async def _close(self, client: aioimaplib.IMAP4) -> None:
        self._client = None
        try:
            if not self._lost and client.get_state() in ("AUTH", "SELECTED"):
                await asyncio.wait_for(client.logout(), 5)
        except (aioimaplib.AioImapException, OSError, TimeoutError):
            pass
        finally:
            _close_transport(client)

    async def _session(self, client: aioimaplib.IMAP4) -> AsyncIterator[None]:
        """SELECT, then catch up and wait for news until stopped; yields after each catch-up."""
        response = await client.select(mailbox_arg(self.settings.folder))
        if response.result != "OK":
            raise aioimaplib.Error(f"SELECT {self.settings.folder} refused: {_text(response)}")
        found = _UIDVALIDITY.search(b" ".join(bytes(line) for line in response.lines))
        if found is None:
            raise aioimaplib.Error(f"SELECT {self.settings.folder}: no UIDVALIDITY")
        uidvalidity = int(found.group(1))
        cursor = Cursor.parse(await self.cursors.load(self.key))
        if cursor is not None and cursor.uidvalidity != uidvalidity:
            log.warning(
                "mailbox %s: UIDVALIDITY changed from %d to %d; full resync from UID 1",
                self.key,
                cursor.uidvalidity,
                uidvalidity,
            )
            cursor = None
        last = cursor.uid if cursor is not None else 0
        has_idle = client.has_capability("IDLE")
        while not self._stopping.is_set():
            self._woken = False
            self._wake_event.clear()
            self._exists_seen = True
            while self._exists_seen and not self._stopping.is_set():
                self._exists_seen = False
                last = await self._catch_up(client, uidvalidity, last)
            yield
            if self._stopping.is_set():
                return
            if has_idle:
                await self._idle(client)
            else:
                await self._poll()
            if self._lost:
                raise ConnectionLost("connection closed by the server")

    async def _catch_up(self, client: aioimaplib.IMAP4, uidvalidity: int, last: int) -> int:
        """Deliver everything above ``last`` in UID order; returns the new highest committed UID."""
        # "n:*" always matches the highest UID, even below n (RFC 3501 section 6.4.8): filter.
        response = await client.uid_search(f"UID {last + 1}:*", charset=None)
        if response.result != "OK":
            raise aioimaplib.Error(f"UID SEARCH refused: {_text(response)}")
        uids = [uid for uid in parse_uid_search(response.lines) if uid > last]
        total, done = len(uids), 0
        for chunk in _uid_ranges(uids, self.settings.batch):
            if self._stopping.is_set():
                break
            response = await client.uid("fetch", f"{chunk[0]}:{chunk[-1]}", "(UID BODY.PEEK[])")
            if response.result != "OK":
                raise aioimaplib.Error(f"UID FETCH refused: {_text(response)}")
            bodies = parse_uid_fetch(response.lines)
            # Expunged since the SEARCH: nothing to deliver.
            present = [(uid, bodies[uid]) for uid in chunk if uid in bodies]
            # The whole batch at once: ingest commits concurrent messages together (group commit).
            outcomes = await asyncio.gather(
                *(self._deliver_one(uid, raw) for uid, raw in present), return_exceptions=True
            )
            committed: list[int] = []
            failure: BaseException | None = None
            advanced = last
            for (uid, _), outcome in zip(present, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    failure = outcome
                    break  # the cursor stops below the first failure; what follows comes again
                advanced = uid
                if outcome:
                    committed.append(uid)
            if failure is None and chunk:
                advanced = max(advanced, chunk[-1])
            if advanced != last:
                last = advanced
                await self.cursors.save(self.key, str(Cursor(uidvalidity, last)))
            if committed:
                await self._after_commit(client, committed)
            if failure is not None:
                raise failure
            done += len(chunk)
            if total > self.settings.batch:
                log.info("mailbox %s: %d/%d fetched", self.key, done, total)
        return last

    async def _deliver_one(self, uid: int, raw: bytes) -> bool:
        """True when committed, False when refused for good (moved past all the same)."""
        try:
            await self.deliver(uid, raw)
        except IngestRefused as exc:
            log.warning("mailbox %s: UID %d refused, moving past it: %s", self.key, uid, exc)
            return False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise DeliveryFailed(f"delivering UID {uid} failed: {exc!r}") from exc
        return True

    async def _after_commit(self, client: aioimaplib.IMAP4, uids: list[int]) -> None:
        action = self.settings.after_commit
        if action == "none":
            return
        uid = ",".join(str(u) for u in uids)
        if action == "seen":
            response = await client.uid("store", str(uid), "+FLAGS.SILENT", r"(\Seen)")
        else:
            target = mailbox_arg(action.removeprefix("move:"))
            if client.has_capability("MOVE"):
                response = await client.uid("move", str(uid), target)
            else:
                response = await client.uid("copy", str(uid), target)
                if response.result == "OK":
                    response = await client.uid("store", str(uid), "+FLAGS.SILENT", r"(\Deleted)")
                # A plain EXPUNGE would also remove messages others marked \Deleted: UIDPLUS only.
                if response.result == "OK" and client.has_capability("UIDPLUS"):
                    response = await client.uid("expunge", str(uid))
        if response.result != "OK":
            log.warning("mailbox %s: %s of UID %s failed: %s", self.key, action, uid, _text(response))

    async def _idle(self, client: aioimaplib.IMAP4) -> None:
        """IDLE until new mail (EXISTS), wake(), stop(), a lost connection or idle_seconds."""
        _drain(client)
        # idle_start waits for the server's "+" for ever if the connection dies first.
        idle = await asyncio.wait_for(
            client.idle_start(timeout=self.settings.idle_seconds), self.settings.timeout
        )
        try:
            while not (self._woken or self._stopping.is_set() or self._lost):
                push = await client.wait_server_push(timeout=self.settings.idle_seconds + 60)
                if push == aioimaplib.STOP_WAIT_SERVER_PUSH:
                    break
                if any(b"EXISTS" in bytes(line) for line in push):
                    break
        finally:
            if not self._lost:
                client.idle_done()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(idle), self.settings.timeout)
            if not idle.done():
                idle.cancel()
            _drain(client)

    async def _poll(self) -> None:
        """Without IDLE: sleep poll_seconds, cut short by wake() or stop()."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake_event.wait(), self.settings.poll_seconds)


def _drain(client: aioimaplib.IMAP4) -> None:
    queue = client.protocol.idle_queue
    while not queue.empty():
        queue.get_nowait()


def _text(response: Any) -> str:
    return " ".join(bytes(line).decode("utf-8", "replace") for line in response.lines)[:300]


def _close_transport(client: aioimaplib.IMAP4) -> None:
    """aioimaplib never closes its transport itself (an open one is a ResourceWarning)."""
    for pending in list(client.tasks) + list(client.protocol.tasks):
        pending.cancel()
    transport = client.protocol.transport
    if transport is not None and not transport.is_closing():
        transport.close()
