"""What every benchmark shares: JSON output, progress, percentiles and child processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent


def emit(figure: dict[str, Any]) -> None:
    """One figure, one JSON line on stdout (the only thing a benchmark writes there)."""
    print(json.dumps(figure), flush=True)


def progress(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def rounded(value: float, digits: int = 3) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else round(value, digits)


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence; NaN when empty."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(seconds: Sequence[float], prefix: str = "") -> dict[str, float | None]:
    ordered = sorted(seconds)
    return {
        f"{prefix}p50_ms": rounded(percentile(ordered, 50) * 1000),
        f"{prefix}p90_ms": rounded(percentile(ordered, 90) * 1000),
        f"{prefix}p99_ms": rounded(percentile(ordered, 99) * 1000),
        f"{prefix}max_ms": rounded(ordered[-1] * 1000 if ordered else math.nan),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_environment() -> dict[str, str]:
    """The environment for servers we start: no HUB_* settings leak in from the caller's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ChildProcess:
    """A server we start, wait for, and stop (SIGTERM, then SIGKILL) — by its own pid only."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self.lines: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._log: TextIO | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self, ready: Callable[[str], bool], within: float) -> None:
        """Start and return once a stdout line satisfies ``ready``."""
        self._log = self.log_path.open("w", encoding="utf-8")
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
            cwd=ROOT,
            env=child_environment(),
        )
        seen = asyncio.Event()

        async def read() -> None:
            assert self._proc is not None and self._proc.stdout is not None
            async for raw in self._proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                self.lines.append(line)
                if ready(line):
                    seen.set()

        self._reader = asyncio.get_running_loop().create_task(read())
        waiter = asyncio.ensure_future(seen.wait())
        try:
            # Ends at the ready line, or when the child closes stdout (it died), or at the deadline.
            await asyncio.wait({waiter, self._reader}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not seen.is_set():
            await self.stop()
            raise RuntimeError(f"{self.argv[0]} did not start within {within:.0f} s:\n{self.tail()}")

    def cpu_seconds(self) -> float | None:
        """User plus system CPU time the child has used so far (all its threads); None off Linux."""
        if self._proc is None:
            return None
        try:
            stat = Path(f"/proc/{self._proc.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)", which may contain spaces
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def tail(self, lines: int = 30) -> str:
        out = self.lines[-lines:]
        with contextlib.suppress(OSError):
            out += self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        return "\n".join(out)

    async def stop(self, grace: float = 10.0) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._reader, 5)
        if self._log is not None:
            self._log.close()
