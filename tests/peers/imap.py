"""Real IMAP servers (RFC 3501, IDLE RFC 2177, UIDPLUS RFC 4315) on loopback for the email tests:
a private Dovecot (the real thing) and pymap's in-memory ``dict`` backend (fast, pure Python).

Both are started as subprocesses on free ports of 127.0.0.1, each in its own temporary directory,
and stopped by PID. They share one small interface, :class:`ImapServer`, whose helpers talk to the
server through aioimaplib the way a mail client would (APPEND, UID SEARCH, STATUS, CREATE).

Fixtures: ``dovecot``, ``pymap`` and ``imap_server`` (parametrised over both). Register them with
``pytest_plugins = ["tests.peers.imap"]``. See ../shared/PEERS.md for the recipes these follow.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import aioimaplib
import pytest

REAPER = Path(__file__).with_name("reaper.py")
START_TIMEOUT = 15.0  # seconds for a server to answer with its greeting
STOP_TIMEOUT = 10.0  # seconds for a server to exit after SIGTERM before it is killed

_APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")
_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mailbox_arg(name: str) -> str:
    """A mailbox name as an IMAP astring: aioimaplib sends arguments verbatim."""
    return name if re.fullmatch(r"[A-Za-z0-9_./-]+", name) else aioimaplib.quoted(name)


async def _greeting(host: str, port: int) -> bool:
    """True once the server sends its ``* OK`` greeting (the port alone may answer before
    Dovecot's login process is ready)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1)
    except (OSError, TimeoutError):
        return False
    try:
        line = await asyncio.wait_for(reader.readline(), 2)
    except (OSError, TimeoutError):
        line = b""
    finally:
        writer.close()
        with suppress(OSError):
            await writer.wait_closed()
    return line.startswith(b"* OK")


@dataclass
class ImapServer:
    """A running IMAP server with one account, and client-side helpers against it.

    Subclasses own the process: ``_launch()`` starts it, ``log_tail()`` explains a failure.
    """

    name: str
    directory: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    user: str = "alice"
    password: str = "alice-imap-pw"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_in: float = 0.0  # seconds the last start() took, for reports
    kill_signal: signal.Signals = signal.SIGKILL  # what kill() sends to ``process``

    # -- lifecycle ---------------------------------------------------------------------------------

    def _launch(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def log_tail(self, lines: int = 20) -> str:
        raise NotImplementedError

    async def start(self) -> None:
        """Start the server (again) on the same port and wait for its greeting."""
        if self.process is not None:
            raise RuntimeError(f"{self.name} is already running")
        began = time.monotonic()
        self.process = self._launch()
        deadline = began + START_TIMEOUT
        while not await _greeting(self.host, self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                await self.kill()
                raise RuntimeError(f"{self.name} did not start on port {self.port}:\n{self.log_tail()}")
            await asyncio.sleep(0.02)
        self.started_in = time.monotonic() - began

    async def stop(self) -> None:
        """SIGTERM and wait for the PID to exit (a restart must not race the old process for the
        port); SIGKILL after STOP_TIMEOUT. Clients are disconnected."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, self.kill_signal)
        await asyncio.to_thread(proc.wait)

    async def kill(self) -> None:
        """Kill the server and all its processes at once: a crash, and the fast teardown
        (Dovecot's orderly stop takes about a second)."""
        proc, self.process = self.process, None
        if proc is None:
            return
        with suppress(ProcessLookupError):
            os.kill(proc.pid, self.kill_signal)
        await asyncio.to_thread(proc.wait)

    async def restart(self) -> None:
        """An orderly stop and a start on the same port; the mail survives on Dovecot only."""
        await self.stop()
        await self.start()

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- client side -------------------------------------------------------------------------------

    async def connect(self, command_timeout: float = 10.0) -> aioimaplib.IMAP4:
        """A new logged-in client connection; close it with :func:`logout` or :func:`close_client`."""
        client = aioimaplib.IMAP4(self.host, self.port, timeout=command_timeout)
        try:
            await client.wait_hello_from_server()
            response = await client.login(self.user, self.password)
            if response.result != "OK":
                raise RuntimeError(f"{self.name}: LOGIN failed: {response.lines}")
        except BaseException:
            close_client(client)
            raise
        return client

    @asynccontextmanager
    async def session(self) -> AsyncIterator[aioimaplib.IMAP4]:
        client = await self.connect()
        try:
            yield client
        finally:
            await logout(client)

    async def append(self, raw: bytes, mailbox: str = "INBOX") -> int | None:
        """APPEND one message; its UID from APPENDUID, or None when the server does not say.
        ``raw`` must have CRLF line ends (``msg.as_bytes(policy=email.policy.SMTP)``)."""
        return (await self.append_many([raw], mailbox))[0]

    async def append_many(self, raws: Iterable[bytes], mailbox: str = "INBOX") -> list[int | None]:
        """APPEND many messages over one connection (a backlog of 1,000 takes about a second)."""
        uids: list[int | None] = []
        async with self.session() as client:
            for raw in raws:
                response = await client.append(raw, mailbox=mailbox_arg(mailbox))
                if response.result != "OK":
                    raise RuntimeError(f"{self.name}: APPEND to {mailbox} failed: {response.lines}")
                found = _APPENDUID.search(b" ".join(response.lines))
                uids.append(int(found.group(2)) if found else None)
        return uids

    async def uids(self, mailbox: str = "INBOX") -> list[int]:
        async with self.session() as client:
            await _ok(client.select(mailbox_arg(mailbox)), f"SELECT {mailbox}")
            response = await _ok(client.uid_search("ALL", charset=None), "UID SEARCH ALL")
        # aioimaplib strips the "SEARCH" of the untagged reply; the last line is the tagged OK's text
        return sorted(int(n) for line in response.lines[:-1] for n in line.split())

    async def uidvalidity(self, mailbox: str = "INBOX") -> int:
        async with self.session() as client:
            response = await _ok(client.status(mailbox_arg(mailbox), "(UIDVALIDITY)"), "STATUS")
        found = _UIDVALIDITY.search(b" ".join(response.lines))
        if found is None:
            raise RuntimeError(f"{self.name}: no UIDVALIDITY in {response.lines}")
        return int(found.group(1))

    async def create_mailbox(self, name: str) -> None:
        async with self.session() as client:
            await _ok(client.create(mailbox_arg(name)), f"CREATE {name}")


async def _ok(pending: object, what: str) -> aioimaplib.Response:
    response: aioimaplib.Response = await pending  # type: ignore[misc]
    if response.result != "OK":
        raise RuntimeError(f"{what} failed: {response.result} {response.lines}")
    return response


def close_client(client: aioimaplib.IMAP4) -> None:
    """Close the socket: aioimaplib never closes its transport itself, and an open one is a
    ResourceWarning (an error under this project's filterwarnings)."""
    for pending in list(client.tasks):
        pending.cancel()
    transport = client.protocol.transport
    if transport is not None and not transport.is_closing():
        transport.close()


async def logout(client: aioimaplib.IMAP4) -> None:
    """LOGOUT when the connection still allows it, then close."""
    try:
        if client.get_state() in ("AUTH", "SELECTED", "NONAUTH"):
            await asyncio.wait_for(client.logout(), 5)
    except (aioimaplib.AioImapException, OSError, TimeoutError):
        pass
    finally:
        close_client(client)


# -- Dovecot -------------------------------------------------------------------------------------------

DOVECOT_CONF = """\
# A private Dovecot for one test: everything under {d}, listeners on 127.0.0.1 only.
protocols = imap
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
ssl = yes
ssl_cert = <{d}/cert.pem
ssl_key = <{d}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
# Wrong passwords answer at once (default 2 s) so login-failure tests stay fast.
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
# Dovecot refuses to own mail as root: mail belongs to nobody (PEERS.md).
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/mail/%u
}}
mail_location = maildir:~/Maildir
# Tests measure the hub, not the disk.
mail_fsync = never
namespace inbox {{
  inbox = yes
}}
protocol imap {{
  # a hub with several mailboxes plus the test's own connections, all from 127.0.0.1
  mail_max_userip_connections = 100
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
    ssl = yes
  }}
}}
service doveadm {{
  inet_listener {{
    port = 0
  }}
}}
"""


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """cert.pem / key.pem for 127.0.0.1 and localhost (clients connect by IP: it must be in the SAN)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-days", "30", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@dataclass
class DovecotServer(ImapServer):
    """``dovecot -c CONF -F`` as root, under tests/peers/reaper.py so that a stop leaves none of
    its processes behind; mail owned by ``nobody``. Also implicit TLS on ``tls_port``
    with a self-signed certificate: ``IMAP4_SSL(host, tls_port, ssl_context=server.client_ssl_context())``."""

    tls_port: int = field(default_factory=free_port)
    kill_signal: signal.Signals = signal.SIGUSR1  # tests/peers/reaper.py: SIGKILL the whole group

    @classmethod
    def create(cls) -> DovecotServer:
        # Not pytest's tmp_path: it is mode 700 under /tmp/pytest-of-root (nobody could not reach
        # its mail) and too long for the unix sockets Dovecot puts in base_dir (108 bytes).
        directory = Path(tempfile.mkdtemp(prefix="hub-dovecot-"))
        directory.chmod(0o755)
        server = cls("dovecot", directory)
        for sub in ("run", "state", "mail"):
            (directory / sub).mkdir()
        shutil.chown(directory / "mail", "nobody", "nogroup")
        self_signed_cert(directory)
        # the auth process runs as the unprivileged "dovecot" user and must read the users file
        (directory / "users").write_text(f"{server.user}:{{PLAIN}}{server.password}\n")
        (directory / "users").chmod(0o644)
        (directory / "dovecot.conf").write_text(
            DOVECOT_CONF.format(
                d=directory, uid="nobody", gid="nogroup", port=server.port, tls_port=server.tls_port
            )
        )
        return server

    @property
    def conf(self) -> Path:
        return self.directory / "dovecot.conf"

    def _launch(self) -> subprocess.Popen[bytes]:
        with (self.directory / "dovecot.stderr").open("ab") as stderr:
            return subprocess.Popen(
                [sys.executable, str(REAPER), "dovecot", "-c", str(self.conf), "-F"],
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def log_tail(self, lines: int = 20) -> str:
        text = ""
        for name in ("dovecot.stderr", "dovecot.log"):
            with suppress(OSError):
                text += (self.directory / name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def client_ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.directory / "cert.pem"))

    def maildir(self, mailbox: str = "INBOX") -> Path:
        """The Maildir++ folder behind a mailbox (sub-folders are ``.Name``)."""
        root = self.directory / "mail" / self.user / "Maildir"
        return root if mailbox.upper() == "INBOX" else root / ("." + mailbox.replace("/", "."))

    def doveadm(self, *args: str) -> str:
        done = subprocess.run(
            ["doveadm", "-c", str(self.conf), *args], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"doveadm {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    async def set_uidvalidity(self, mailbox: str = "INBOX", value: int | None = None) -> int:
        """Change the mailbox's UIDVALIDITY while the server runs; messages and UIDs stay as they
        are (``doveadm mailbox update --uid-validity``). Connected clients are not told until they
        SELECT again. Returns the new value (old + 1 unless given)."""
        new = value if value is not None else await self.uidvalidity(mailbox) + 1
        await asyncio.to_thread(
            self.doveadm, "mailbox", "update", "-u", self.user, "--uid-validity", str(new), mailbox
        )
        return new

    async def renumber(self, mailbox: str = "INBOX") -> int:
        """What a rebuilt mailbox looks like to a client: the server is stopped, the mailbox's
        dovecot-uidlist and index files are deleted (the Maildir files stay), and on start Dovecot
        numbers the same messages again from UID 1 under a new UIDVALIDITY (old + 1, forced with
        doveadm because Dovecot derives it from the clock). Returns the new UIDVALIDITY."""
        old = await self.uidvalidity(mailbox)
        await self.stop()
        folder = self.maildir(mailbox)
        for path in folder.glob("dovecot*"):
            if path.name == "dovecot-uidlist" or path.name.startswith("dovecot.index"):
                path.unlink()
        await self.start()
        new = await self.uidvalidity(mailbox)
        if new <= old:
            new = await self.set_uidvalidity(mailbox, old + 1)
        return new


# -- pymap ---------------------------------------------------------------------------------------------


@dataclass
class PymapServer(ImapServer):
    """pymap's ``dict`` backend: one user, memory only, so a restart empties every mailbox."""

    def _launch(self) -> subprocess.Popen[bytes]:
        pymap = Path(sys.executable).with_name("pymap")
        command = [str(pymap)] if pymap.exists() else [sys.executable, "-m", "pymap"]
        with (self.directory / "pymap.log").open("ab") as stderr:
            return subprocess.Popen(
                [
                    *command,
                    *("--host", self.host, "--port", str(self.port), "--no-tls"),
                    *("dict", "--demo-user", self.user, "--demo-password", self.password),
                ],
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def log_tail(self, lines: int = 20) -> str:
        with suppress(OSError):
            return "\n".join((self.directory / "pymap.log").read_text(errors="replace").splitlines()[-lines:])
        return ""


# -- fixtures ------------------------------------------------------------------------------------------


def dovecot_missing() -> str | None:
    """Why a private Dovecot cannot run here, or None."""
    if shutil.which("dovecot") is None and not Path("/usr/sbin/dovecot").exists():
        return "Dovecot is not installed (sh tests/peers/install.sh, or apt-get install dovecot-imapd)"
    if os.geteuid() != 0:
        return "the private Dovecot runs as root (its mail is owned by nobody)"
    if shutil.which("openssl") is None:
        return "openssl is needed for Dovecot's certificate"
    return None


@pytest.fixture
async def dovecot() -> AsyncIterator[DovecotServer]:
    reason = dovecot_missing()
    if reason:
        pytest.skip(reason)
    server = DovecotServer.create()
    try:
        await server.start()
        yield server
    finally:
        await server.kill()
        server.remove()


@pytest.fixture
async def pymap() -> AsyncIterator[PymapServer]:
    server = PymapServer("pymap", Path(tempfile.mkdtemp(prefix="hub-pymap-")))
    try:
        await server.start()
        yield server
    finally:
        await server.kill()
        server.remove()


@pytest.fixture(params=["dovecot", "pymap"])
def imap_server(request: pytest.FixtureRequest) -> Iterator[ImapServer]:
    """Each test that takes this runs once against Dovecot and once against pymap."""
    yield request.getfixturevalue(request.param)
