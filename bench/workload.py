"""The ingest workload: which contact sends each message, and those messages."""

from __future__ import annotations

import random
from dataclasses import dataclass

from hub.model import IdentityKind, InboundMessage

CHANNEL = "webchat"


@dataclass(frozen=True, slots=True)
class Workload:
    """Which contact sends each message. A contact's first message creates it and its conversation."""

    senders: tuple[int, ...]
    contacts: int

    @property
    def messages(self) -> int:
        return len(self.senders)


def make_workload(messages: int, new_share: float, seed: int = 7) -> Workload:
    rng = random.Random(seed)
    senders: list[int] = []
    contacts = 0
    for _ in range(messages):
        if contacts == 0 or rng.random() < new_share:
            senders.append(contacts)
            contacts += 1
        else:
            senders.append(rng.randrange(contacts))
    return Workload(tuple(senders), contacts)


def visitor(contact: int) -> str:
    return f"bench-visitor-{contact}"


def message_text(i: int) -> str:
    return f"Hello, my order #{100000 + i} has not arrived yet. Could you check where it is?"


def inbound_messages(workload: Workload) -> list[InboundMessage]:
    return [
        InboundMessage(
            channel=CHANNEL,
            channel_kind="webchat",
            external_id=f"bench-{i}",
            identity_kind=IdentityKind.WEBCHAT,
            sender=visitor(contact),
            sender_name=f"Visitor {contact}",
            text=message_text(i),
        )
        for i, contact in enumerate(workload.senders)
    ]
