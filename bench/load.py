"""An open-loop websocket load generator and the clock readings it takes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable
from typing import Any

from aiohttp import ClientWebSocketResponse, WSMsgType

from bench.common import latency_summary, percentile, progress, rounded

CONNECT_CONCURRENCY = 50
CONNECT_TIMEOUT = 90.0
# After the last send, how long late messages (and acks) may still arrive before they count as lost.
DRAIN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 10.0
NAN = math.nan


class Probe:
    """Per-message clock readings (``time.perf_counter``; NaN until it happens)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.scheduled = [NAN] * count
        self.sent = [NAN] * count
        self.acked = [NAN] * count
        self.arrived = [NAN] * count
        self.sent_count = 0
        self.arrived_count = 0
        self.acked_count = 0
        self.errors = 0
        self.resyncs = 0

    def arrive(self, seq: int, at: float) -> None:
        if 0 <= seq < self.count and math.isnan(self.arrived[seq]):
            self.arrived[seq] = at
            self.arrived_count += 1

    def ack(self, seq: int, at: float) -> None:
        if 0 <= seq < self.count and math.isnan(self.acked[seq]):
            self.acked[seq] = at
            self.acked_count += 1

    def summary(self, first: int = 0) -> dict[str, Any]:
        """The figures; with ``first``, also split messages ``< first`` from the rest."""
        n = self.sent_count
        sent, scheduled, arrived, acked = self.sent[:n], self.scheduled[:n], self.arrived[:n], self.acked[:n]
        latency = [a - s for s, a in zip(sent, arrived, strict=True) if not math.isnan(a)]
        from_schedule = sorted(a - s for s, a in zip(scheduled, arrived, strict=True) if not math.isnan(a))
        lag = sorted(s - d for s, d in zip(sent, scheduled, strict=True))
        duration = (sent[-1] - sent[0]) if n > 1 else 0.0
        figure: dict[str, Any] = {
            "messages": n,
            "achieved_rate": rounded((n - 1) / duration if duration > 0 else 0.0, 1),
            "duration_s": rounded(duration),
            "lost": n - len(latency),
            **latency_summary(latency),
            "p99_from_schedule_ms": rounded(percentile(from_schedule, 99) * 1000),
            "send_lag_p99_ms": rounded(percentile(lag, 99) * 1000),
        }
        acks = [a - s for s, a in zip(sent, acked, strict=True) if not math.isnan(a)]
        if acks:
            ordered = sorted(acks)
            figure["ack_p50_ms"] = rounded(percentile(ordered, 50) * 1000)
            figure["ack_p99_ms"] = rounded(percentile(ordered, 99) * 1000)
            figure["unacked"] = n - len(acks)
        if first:
            for name, part in (("first", range(min(first, n))), ("repeat", range(min(first, n), n))):
                ordered = sorted(arrived[k] - sent[k] for k in part if not math.isnan(arrived[k]))
                figure[f"{name}_p99_ms"] = rounded(percentile(ordered, 99) * 1000)
        if self.errors:
            figure["errors"] = self.errors
        if self.resyncs:
            figure["resyncs"] = self.resyncs
        return figure


def frame(seq: int) -> str:
    text = f"Hi, is anyone there? I have a question about my invoice. bench {seq}"
    return json.dumps({"type": "message", "client_id": f"c{seq}", "text": text})


def seq_of(text: Any) -> int:
    """The sequence number at the end of a bench message's text, or -1."""
    if isinstance(text, str):
        head, _, tail = text.rpartition(" bench ")
        if head and tail.isdigit():
            return int(tail)
    return -1


async def send_open_loop(sockets: list[ClientWebSocketResponse], probe: Probe, rate: float) -> None:
    """Send ``probe.count`` frames at ``rate`` per second in all, round-robin over ``sockets``.

    Open loop: message k is due at ``start + k / rate``; a late wake-up sends every due frame at
    once. Ends by count, or at twice the planned duration plus 5 s if sending itself stalls."""
    start = time.perf_counter() + 0.05
    hard_stop = start + 2 * probe.count / rate + 5
    k = 0
    while k < probe.count:
        now = time.perf_counter()
        if now > hard_stop:
            progress(f"sending stalled: stopped after {k} of {probe.count} messages")
            break
        due = min(probe.count, math.floor((now - start) * rate) + 1) if now >= start else 0
        while k < due:
            probe.scheduled[k] = start + k / rate
            probe.sent[k] = time.perf_counter()
            probe.sent_count = k + 1
            await sockets[k % len(sockets)].send_str(frame(k))
            k += 1
        if k < probe.count:
            await asyncio.sleep(max(0.0, start + k / rate - time.perf_counter()))


async def drain(probe: Probe, acks: bool) -> None:
    """Wait (polling, bounded by DRAIN_TIMEOUT) until every sent message arrived and, with
    ``acks``, was acknowledged."""
    deadline = time.perf_counter() + DRAIN_TIMEOUT
    while time.perf_counter() < deadline:
        if probe.arrived_count >= probe.sent_count and (not acks or probe.acked_count >= probe.sent_count):
            return
        await asyncio.sleep(0.02)


async def read_frames(ws: ClientWebSocketResponse, on_frame: Callable[[dict[str, Any], float], None]) -> None:
    async for msg in ws:
        at = time.perf_counter()
        if msg.type == WSMsgType.TEXT:
            data = json.loads(msg.data)
            if isinstance(data, dict):
                on_frame(data, at)


async def connect_all(count: int, connect: Callable[[int], Any], what: str) -> list[ClientWebSocketResponse]:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(i: int) -> ClientWebSocketResponse:
        async with gate:
            ws: ClientWebSocketResponse = await connect(i)
            return ws

    started = time.perf_counter()
    sockets = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), CONNECT_TIMEOUT)
    progress(f"{count} {what} connected in {time.perf_counter() - started:.1f} s")
    return sockets


async def close_all(sockets: list[ClientWebSocketResponse], readers: list[asyncio.Task[None]]) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True), CLOSE_TIMEOUT
        )
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
