"""`python -m worker demo` end to end, as CI runs it: exit 0, every step in the summary, nothing left running."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from worker.devstack import port_open

STEPS = (
    "1. account",
    "2. sync mailbox",
    "3. analyse new mail",
    "4. send now",
    "5. schedule a send",
    "6. dead letter",
    "7. queues",
)


def test_demo_runs_the_whole_story_and_cleans_up() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "ANTHROPIC_API_KEY")}
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--no-serve"], env=env, capture_output=True, text=True, timeout=150
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    summary = out[out.index("Demo summary") :]
    for step in STEPS:
        assert re.search(rf"│ ✓ │ {re.escape(step)}\s", summary), step
    assert "6 fetched, 6 new" in summary and "analysed by the heuristic analyzer" in summary
    assert "delivered to the SMTP sink" in summary and "returned the same job" in summary
    assert "dead-lettered" in summary and "550" in summary
    assert re.search(r"Dashboard:\s+http://127\.0\.0\.1:\d+/dashboard#token=", summary)
    assert out.rstrip().endswith("Stopped and cleaned up.")
    ports = [int(p) for p in re.findall(r"(?:redis-server on|SMTP sink|IMAP \(pymap\)) :(\d+)", summary)]
    assert len(ports) == 3 and not any(port_open("127.0.0.1", p) for p in ports)
    assert "Traceback" not in proc.stderr
