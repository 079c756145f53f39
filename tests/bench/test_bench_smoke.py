"""The benchmarks run end to end and speak JSON. Timings are never asserted: they are for reading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

KEYS = {
    "ingest": {"bench", "db", "messages", "per_s", "limit_per_s", "ratio", "routed_per_s", "stored"},
    "websocket_echo": {"bench", "visitors", "rate", "p50_ms", "p99_ms", "lost", "achieved_rate"},
    "webchat_to_agent": {
        "bench",
        "visitors",
        "rate",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "max_ms",
        "lost",
        "achieved_rate",
        "duration_s",
    },
    "route": {"bench", "db", "agents", "queued", "queues", "skills", "p50_ms", "p99_ms", "assignments_per_s"},
    "route_arrival": {"bench", "db", "arrivals", "assigned", "p50_ms", "p99_ms"},
    "email_push": {"bench", "server", "samples", "p50_ms", "p99_ms"},
    "email_catchup": {"bench", "server", "messages", "stored", "per_s", "seconds"},
}


def quick_run(benchmark: str) -> list[dict[str, object]]:
    argv = [sys.executable, "-m", "bench", "--quick", benchmark]
    if os.environ.get("HUB_TEST_DATABASE_URL"):
        argv += ["--postgres-url", os.environ["HUB_TEST_DATABASE_URL"]]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=150, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]  # every stdout line is JSON


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("benchmark", "figures"),
    [
        ("ingest", {"ingest"}),
        ("webchat", {"websocket_echo", "webchat_to_agent"}),
        ("route", {"route", "route_arrival"}),
        ("email", {"email_push", "email_catchup"}),
    ],
)
def test_quick_run_prints_one_json_line_per_figure(benchmark: str, figures: set[str]) -> None:
    lines = quick_run(benchmark)
    assert {line["bench"] for line in lines} == figures
    for line in lines:
        if "skipped" in line:  # PostgreSQL or Dovecot unavailable: said why, measured nothing
            assert line["skipped"] and (line.get("db") == "postgresql" or line.get("server") == "dovecot")
            continue
        assert KEYS[str(line["bench"])] <= line.keys(), line
    if benchmark == "ingest":
        sqlite = [line for line in lines if line["db"] == "sqlite"]
        assert len(sqlite) == 1 and sqlite[0]["stored"] == sqlite[0]["messages"]
    if benchmark == "email":  # every backlog mail was stored
        for line in lines:
            if line["bench"] == "email_catchup" and "skipped" not in line:
                assert line["stored"] == line["messages"], line
    if benchmark == "route":  # the router really drained the backlog and took the arrivals
        for line in lines:
            if "skipped" not in line:
                assert line["assigned"] > 0, line
