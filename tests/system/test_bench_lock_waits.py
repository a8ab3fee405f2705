"""bench/lock_waits.py at a tiny N: it times the threads backend's chat lock
(its timing subclass really is the server's lock), every delivery of every
phase arrives, and the report fits 80 columns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PHASES = ["login storm", "bcast 150/s", "bcast max", "dm spread"]


def test_the_lock_benchmark_times_every_phase_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "lock.json"
    cmd = [sys.executable, "bench/lock_waits.py", "-n", "20", "--seconds", "0.2",
           "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-2000:]}"
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Chat lock of the threads backend, N = 20")
    assert "every delivery arrived" in lines
    table = [line for line in lines if not line.startswith("wrote ")]
    assert max(len(line) for line in table) <= 80, max(table, key=len)
    doc = json.loads(out.read_text())
    for backend in ("threads", "select"):
        assert [phase["phase"] for phase in doc[backend]] == PHASES
        for phase in doc[backend]:
            assert phase["delivered"] == phase["expected"] > 0, (backend, phase)
    assert doc["threads"][0]["expected"] == 20 * 21 // 2  # the storm's notices
    for phase in doc["threads"]:
        lock = phase["lock"]
        assert lock["turns"] > 0, phase  # the timing lock was the one the server took
        assert 0 <= lock["wait_us"]["p50"] <= lock["wait_us"]["max"]
        assert 0 < lock["hold_us"]["p50"] <= lock["hold_us"]["max"]
        # Its row in the lock table, with its turns.
        assert any(line.startswith(phase["phase"]) and f" {lock['turns']} " in line
                   for line in lines)
