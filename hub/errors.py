"""Errors that mean something: a channel's send either may be retried or never will succeed."""

from __future__ import annotations

from hub.model import Refused


class ChannelError(Exception):
    """Base of errors a channel raises from ``send``."""


class TransientError(ChannelError):
    """Retry later; ``retry_after`` (seconds) overrides the back-off when the remote side said when."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(ChannelError):
    """Never retry; the message is marked failed and the agent sees this text."""


class IngestRefused(ValueError):
    """An inbound message that can never be stored (bad address, oversized attachment, text that is
    not Unicode); a channel tells its sender this reason instead of retrying."""


class UserError(Refused):
    """Bad input from a person or API client; becomes a 4xx JSON answer."""

    def __init__(self, error: str, detail: str = "", status: int = 400) -> None:
        super().__init__(error, detail, status)
