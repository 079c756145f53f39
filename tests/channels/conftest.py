from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.clients import close_open_sockets
from tests.conftest import Live


@pytest.fixture
async def live(live: Live) -> AsyncIterator[Live]:
    """The hub of the root fixture; websockets the test opened through tests.clients are closed
    after it, before the client session."""
    yield live
    await close_open_sockets()
