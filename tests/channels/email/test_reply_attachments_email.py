"""An agent's reply with a file reaches the customer as a MIME attachment: customer mail in over
IMAP (pymap), the reply with a base64 PDF through the REST API, out over SMTP to aiosmtpd, whose
delivery carries the file under its name with its exact bytes."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

from tests.channels.email.conftest import SmtpServer
from tests.channels.email.test_hub_email import (
    conversation_messages,
    conversations,
    customer_mail,
    email_config,
    eventually,
    mailbox_settings,
    serving,
)
from tests.clients import call
from tests.peers.imap import PymapServer

PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + bytes(range(256)) * 16 + b"\n%%EOF\n"


async def test_reply_attachment_is_a_mime_part_of_the_delivered_mail(
    tmp_path: Path, db_url: str, pymap: PymapServer, smtp_server: SmtpServer
) -> None:
    cfg = email_config(tmp_path, db_url, [mailbox_settings(pymap)], smtp_server)
    async with serving(cfg) as (live, admin):
        await pymap.append(customer_mail(1, tag="files", sender="Carla <carla@example.net>"))
        [conversation] = await eventually(lambda: conversations(live, admin), lambda c: len(c) == 1)
        body = {
            "text": "Your invoice is attached.",
            "attachments": [
                {
                    "filename": "invoice 2026-11.pdf",
                    "content_type": "application/pdf",
                    "data": base64.b64encode(PDF).decode(),
                }
            ],
        }
        status, answer = await call(
            live,
            "POST",
            f"/api/conversations/{conversation['id']}/messages",
            {**admin, "Content-Type": "application/json"},
            data=json.dumps(body).encode(),
        )
        assert status == 202, answer
        assert [a["filename"] for a in answer["message"]["attachments"]] == ["invoice 2026-11.pdf"]

        await eventually(lambda: asyncio.sleep(0, len(smtp_server.inbox.deliveries)), lambda n: n >= 1)
        delivered = smtp_server.inbox.only()
        assert smtp_server.inbox.deliveries[0].rcpt_tos == ["carla@example.net"]
        text = delivered.get_body(("plain",))
        assert text is not None and "invoice is attached" in text.get_content()
        parts = list(delivered.iter_attachments())
        assert [(p.get_filename(), p.get_content_type()) for p in parts] == [
            ("invoice 2026-11.pdf", "application/pdf")
        ]
        assert parts[0].get_content() == PDF

        messages = await eventually(
            lambda: conversation_messages(live, admin, conversation["id"]),
            lambda ms: any(m["direction"] == "out" and m["status"] == "sent" for m in ms),
        )
        [out] = [m for m in messages if m["direction"] == "out"]
        assert out["attachments"] == answer["message"]["attachments"]
