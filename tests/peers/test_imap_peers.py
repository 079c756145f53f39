"""The IMAP peers themselves (tests/peers/imap.py): what the email channel's tests rely on."""

from __future__ import annotations

import asyncio
import email.policy
import time
from email.message import EmailMessage

import aioimaplib

from tests.peers.imap import DovecotServer, ImapServer, close_client, logout


def mail(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Customer {n} <customer{n}@example.net>"
    msg["To"] = "support@example.com"
    msg["Subject"] = f"Question {n}"
    msg["Message-ID"] = f"<peer-test-{n}@example.net>"
    msg.set_content(f"Hello, this is message {n}.\n")
    return msg.as_bytes(policy=email.policy.SMTP)  # CRLF line ends, as IMAP requires


async def test_append_and_list_uids(imap_server: ImapServer) -> None:
    uids = [await imap_server.append(mail(n)) for n in range(3)]
    first = uids[0]
    assert first is not None  # APPENDUID: Dovecot starts at UID 1, pymap at 101
    assert uids == [first, first + 1, first + 2]
    assert await imap_server.uids("INBOX") == uids
    assert await imap_server.uidvalidity("INBOX") > 0


async def test_fetch_returns_the_appended_bytes(imap_server: ImapServer) -> None:
    uid = await imap_server.append(mail(7))
    async with imap_server.session() as client:
        await client.select("INBOX")
        response = await client.uid("fetch", str(uid), "(UID BODY.PEEK[])")
    assert response.result == "OK"
    assert mail(7) in response.lines


async def test_create_mailbox_and_append_there(imap_server: ImapServer) -> None:
    await imap_server.create_mailbox("Support Desk")
    uid = await imap_server.append(mail(1), mailbox="Support Desk")
    assert await imap_server.uids("Support Desk") == [uid]
    assert await imap_server.uids("INBOX") == []


async def test_idle_push_after_append_from_another_connection(imap_server: ImapServer) -> None:
    watcher = await imap_server.connect()
    try:
        assert watcher.has_capability("IDLE")
        await watcher.select("INBOX")
        idle = await watcher.idle_start(timeout=30)
        began = time.monotonic()
        await imap_server.append(mail(1))
        push = await watcher.wait_server_push(timeout=5)
        waited = time.monotonic() - began
        assert b"1 EXISTS" in push
        watcher.idle_done()
        await asyncio.wait_for(idle, 5)
    finally:
        await logout(watcher)
    assert waited < 5


async def test_wrong_password_is_refused(imap_server: ImapServer) -> None:
    client = aioimaplib.IMAP4(imap_server.host, imap_server.port, timeout=5)
    try:
        await client.wait_hello_from_server()
        response = await client.login(imap_server.user, "not-the-password")
        assert response.result == "NO"
    finally:
        close_client(client)


async def test_dovecot_restart_keeps_the_mail_and_drops_clients(dovecot: DovecotServer) -> None:
    await dovecot.append_many([mail(n) for n in range(3)])
    before = await dovecot.uidvalidity()
    client = await dovecot.connect()
    try:
        await dovecot.restart()
        for _ in range(100):  # the server closed the connection: the transport follows
            if client.protocol.transport.is_closing():
                break
            await asyncio.sleep(0.01)
        assert client.protocol.transport.is_closing()
    finally:
        close_client(client)
    assert await dovecot.uids() == [1, 2, 3]
    assert await dovecot.uidvalidity() == before
    assert await dovecot.append(mail(4)) == 4


async def test_dovecot_implicit_tls(dovecot: DovecotServer) -> None:
    client = aioimaplib.IMAP4_SSL(
        dovecot.host, dovecot.tls_port, ssl_context=dovecot.client_ssl_context(), timeout=5
    )
    try:
        await client.wait_hello_from_server()
        assert (await client.login(dovecot.user, dovecot.password)).result == "OK"
    finally:
        await logout(client)


async def test_dovecot_set_uidvalidity_keeps_uids(dovecot: DovecotServer) -> None:
    await dovecot.append_many([mail(n) for n in range(3)])
    before = await dovecot.uidvalidity()
    after = await dovecot.set_uidvalidity()
    assert after == before + 1
    assert await dovecot.uidvalidity() == after
    assert await dovecot.uids() == [1, 2, 3]


async def test_dovecot_renumber_gives_new_uidvalidity_and_uids(dovecot: DovecotServer) -> None:
    await dovecot.append_many([mail(n) for n in range(3)])
    async with dovecot.session() as client:  # expunge UID 1 so the renumbering shows
        await client.select("INBOX")
        await client.uid("store", "1", "+FLAGS.SILENT", r"(\Deleted)")
        await client.expunge()
    assert await dovecot.uids() == [2, 3]
    before = await dovecot.uidvalidity()
    after = await dovecot.renumber()
    assert after > before
    assert await dovecot.uidvalidity() == after
    assert await dovecot.uids() == [1, 2]
