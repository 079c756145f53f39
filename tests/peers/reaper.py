"""``python reaper.py COMMAND...``: run a daemon that forks helpers (Dovecot) so that stopping it
leaves no process behind.

Dovecot's master exits on SIGTERM but leaves some children running (log, stats, and the imap
process of a connected client, which keeps serving it: a "server restart" test would see no
disconnect). So this wrapper makes itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER), runs
COMMAND in a process group of its own, and once COMMAND exits SIGKILLs what is left of that group and
reaps it all, instead of leaving the orphans to PID 1.

SIGTERM: forwarded to COMMAND (an orderly stop; clients are then cut off).
SIGUSR1: SIGKILL the whole group at once (a crash).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from contextlib import suppress
from types import FrameType

PR_SET_CHILD_SUBREAPER = 36


def main(command: list[str]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    child = subprocess.Popen(command, start_new_session=True)

    def on_signal(signo: int, _frame: FrameType | None) -> None:
        with suppress(ProcessLookupError):
            if signo == signal.SIGTERM:
                os.kill(child.pid, signal.SIGTERM)
            else:
                os.killpg(child.pid, signal.SIGKILL)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGUSR1, on_signal)
    code = child.wait()
    with suppress(ProcessLookupError):  # the group outlives its leader while members remain
        os.killpg(child.pid, signal.SIGKILL)
    while True:  # orphans of the group are ours now (subreaper): reap every one
        try:
            os.wait()
        except ChildProcessError:
            return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
