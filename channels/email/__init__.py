"""Email: inbound parsing of RFC 5322 messages (IMAP in) and composing replies (SMTP out).

Parsing is pure functions over bytes (``channels.email.parse.parse_email``); the channel kind is not
registered yet.
"""
