"""Web chat: an embeddable widget talking to the hub over a websocket."""

from channels.webchat.channel import WebChatChannel

__all__ = ["WebChatChannel"]
