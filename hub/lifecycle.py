"""Stopping background loops without cutting a transaction in half.

A task cancelled while it opens or uses a database connection can leave that connection behind
(asyncpg finishes setting a new connection up after it connects; a cancel in between strands it).
So loops watch a stop flag between units of work, and :func:`stop_loop` lets the work in hand
finish, cancelling only a loop that does not stop within its grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)


async def stop_loop(task: asyncio.Task[None] | None, *, grace: float, name: str) -> None:
    """Wait up to ``grace`` seconds for ``task`` (already told to stop) to end, then cancel it."""
    if task is None or task.done():
        return
    try:
        await asyncio.wait_for(asyncio.shield(task), grace)
    except TimeoutError:
        log.warning("%s did not stop within %.0f s; cancelling it", name, grace)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    except asyncio.CancelledError:
        if not task.done():  # our caller was cancelled, not the loop: do not leave it running
            task.cancel()
        raise
