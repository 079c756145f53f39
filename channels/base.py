"""The channel contract every adapter implements, and what adapters share.

An adapter *declares* itself with class attributes and implements ``start``, ``send`` and ``stop``;
reconnecting with back-off and jitter lives here once (:meth:`BaseChannel.supervise`), not in each
adapter. Adapters may import ``hub.model``, ``hub.errors`` and ``hub.types`` only: never storage or
routing.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from hub.model import OutboundMessage, SendResult
from hub.types import Archive, ChannelHost

log = logging.getLogger(__name__)

_REGISTRY: dict[str, type[BaseChannel]] = {}


def register_channel(cls: type[BaseChannel]) -> type[BaseChannel]:
    """Make a channel kind configurable by name (``kind = "webchat"`` in hub.toml)."""
    if cls.kind in _REGISTRY and _REGISTRY[cls.kind] is not cls:
        raise ValueError(f"channel kind {cls.kind!r} registered twice")
    _REGISTRY[cls.kind] = cls
    return cls


def channel_class(kind: str) -> type[BaseChannel]:
    try:
        return _REGISTRY[kind]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise ValueError(f"unknown channel kind {kind!r} (known: {known})") from None


class BaseChannel(abc.ABC):
    kind: ClassVar[str]
    # Longest text the channel accepts in one message; longer inbound text is refused with a reason.
    max_body_len: ClassVar[int] = 20_000
    # Back-off of the reconnect loop: first delay, cap, both in seconds.
    reconnect_initial: ClassVar[float] = 0.5
    reconnect_max: ClassVar[float] = 60.0

    def __init__(self, name: str, settings: Mapping[str, Any], *, data_dir: Any = None) -> None:
        self.name = name
        self.settings = dict(settings)
        self.data_dir = data_dir
        self.host: ChannelHost | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self, host: ChannelHost) -> None:
        self.host = host

    @abc.abstractmethod
    async def send(self, msg: OutboundMessage) -> SendResult:
        """Deliver one message; raise TransientError (retry) or PermanentError (fail, say why)."""

    async def send_typing(self, recipient: str) -> None:  # noqa: B027 - optional hook
        """Show the customer that an agent is typing, where the channel can; silently nothing otherwise."""

    # Whether ``send`` delivers ``OutboundMessage.attachments``; replies with files to a channel
    # that cannot are refused up front rather than sent without them.
    sends_attachments: ClassVar[bool] = False
    # HELP text of each metric family :meth:`metrics` reports.
    metric_help: ClassVar[dict[str, str]] = {}

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        """Gauges for ``/metrics`` as (family name, labels, value); none by default."""
        return []

    def outbound_id(self, msg: OutboundMessage) -> str | None:
        """The id ``send`` will give ``msg`` when the channel chooses it; None: the remote side does."""
        return None

    def archive(self, path: Path, fmt: str) -> Archive:
        """Historical messages from a file in format ``fmt`` (``hub import``), as this channel would
        have received them live. Channels that can read an archive format override this."""
        raise ValueError(f"channel kind {self.kind} cannot import {fmt}")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def routes(self) -> list[Any]:
        return []

    def supervise(self, connect_once: Callable[[], Awaitable[None]], *, what: str) -> asyncio.Task[None]:
        """Run ``connect_once`` for ever: when it returns or fails, wait (exponential back-off with
        jitter, reset after a connection that lasted) and run it again. Stopped by :meth:`stop`."""

        async def loop() -> None:
            delay = self.reconnect_initial
            while True:
                started = asyncio.get_running_loop().time()
                try:
                    await connect_once()
                    log.info("%s %s: connection closed; reconnecting", self.name, what)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("%s %s failed: %s; retrying in about %.1f s", self.name, what, exc, delay)
                if asyncio.get_running_loop().time() - started > self.reconnect_max:
                    delay = self.reconnect_initial
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(self.reconnect_max, delay * 2)

        task = asyncio.get_running_loop().create_task(loop(), name=f"{self.name}:{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
