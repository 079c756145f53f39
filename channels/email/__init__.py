"""Email: IMAP in, SMTP out (``kind = "email"`` in hub.toml, :mod:`channels.email.channel`).

Parsing is pure functions over bytes (``channels.email.parse.parse_email``); ``receive`` follows one
IMAP mailbox, ``compose`` and ``send`` build and deliver replies, and ``channel`` wires them to the hub.
"""
