from hub.app import Hub
from hub.model import IdentityKind, InboundMessage


async def test_ingest_roundtrip(hub: Hub) -> None:
    msg = InboundMessage("webchat", "webchat", "v-1:c1", IdentityKind.WEBCHAT, "v-1", "hello")
    first = await hub.ingest(msg)
    again = await hub.ingest(msg)
    assert not first.duplicate and again.duplicate
    assert again.message_id == first.message_id
