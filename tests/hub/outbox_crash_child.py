"""A hub process for the outbox crash tests, run on its own so the test can kill it with SIGKILL.

    python -m tests.hub.outbox_crash_child DB_URL DATA_DIR AGENT_ID CONVERSATION_ID COUNT MODE LEASE

Commits COUNT replies through the hub's own reply path and prints ``committed`` and their message
ids. In mode ``claimed`` a dispatcher (lease LEASE seconds) then claims them and hands them to a
channel whose ``send`` never returns, so the process dies between claim and delivery; in mode
``committed`` no dispatcher runs, so it dies between commit and claim. Either way it then waits to
be killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import ClassVar

from channels.base import BaseChannel
from hub.app import Hub
from hub.config import HubConfig
from hub.model import OutboundMessage, SendResult
from hub.outbox import Dispatcher, OutboxSettings


class HangingChannel(BaseChannel):
    """Accepts a message and never answers: the remote side of a process about to die."""

    kind: ClassVar[str] = "webchat"

    async def send(self, msg: OutboundMessage) -> SendResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def main(argv: list[str]) -> None:
    db_url, data_dir, agent_id, conversation_id, count, mode, lease = argv
    config = HubConfig(data_dir=Path(data_dir), database_url=db_url)
    async with Hub(config, migrate=False, start_channels=False) as hub:
        who = await hub.accounts.get(int(agent_id))
        assert who is not None, f"no agent {agent_id}"
        ids = []
        for n in range(int(count)):
            reply = await hub.conversations.reply(who, int(conversation_id), f"reply {n}")
            ids.append(reply["message"]["id"])
        print("committed", *ids, flush=True)
        if mode == "claimed":
            channel = HangingChannel("webchat", {})
            dispatcher = Dispatcher(
                hub.db, hub.bus, lambda: {"webchat": channel}, OutboxSettings(lease=float(lease))
            )
            await dispatcher.run_once()  # never returns: every send hangs
        elif mode != "committed":
            raise SystemExit(f"unknown mode {mode!r}")
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
