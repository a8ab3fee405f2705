"""The load benchmark runs end to end at small N, and what it reports holds together.

The run is a subprocess (``python bench/load.py --quick``), exactly as a user
types it: that checks the script entry point, and a hung run is killed by the
timeout with its whole process group, servers and receivers included.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEMS = ["select", "threads", "asyncio"] + (["redis"] if shutil.which("redis-server") else [])


def run_quick(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], dict]:
    json_path = tmp_path / "smoke.json"
    cmd = [sys.executable, "bench/load.py", "--quick", "--quiet", "--systems", ",".join(SYSTEMS),
           "--json", str(json_path), "--plots", str(tmp_path / "plots")]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the quick benchmark run did not finish in 90 s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert json_path.exists(), "the JSON report was not written"
    return result, json.loads(json_path.read_text())


def test_quick_run_delivers_everything_once_with_sane_latencies(tmp_path: Path) -> None:
    result, doc = run_quick(tmp_path)
    [run] = doc["runs"]
    assert run["systems"] == SYSTEMS
    for name in SYSTEMS:
        [rnd] = [r[name] for r in run["rounds"]]
        assert "error" not in rnd, rnd["error"]
        assert rnd["storm"]["complete"] and rnd["storm"]["lost"] == 0
        assert rnd["presence"]["lost"] == 0 and rnd["presence"]["duplicated"] == 0
        b = rnd["broadcast"]
        assert b["lost"] == 0 and b["duplicated"] == 0 and b["unsent"] == 0
        assert b["delivered"] == run["n"] * b["sent"]
        p50, p99 = b["per_recipient_ms"]["p50"], b["per_recipient_ms"]["p99"]
        # Loopback at 20 clients: well under a second even on a loaded machine.
        assert 0 < p50 <= p99 < 1000, (name, p50, p99)
        assert all(step["lost"] == 0 for step in rnd["direct"]["steps"][:1])
        assert rnd["direct"]["duplicated"] == 0
        assert rnd["memory"]["kb_per_conn"] is not None
        assert b["server_cpu_per_1k"] is not None and not math.isnan(b["server_cpu_per_1k"])
    # The table names every system and quotes the log level the servers ran at.
    assert all(name in result.stdout for name in SYSTEMS)
    assert "Log levels: select WARNING" in result.stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return  # plots are an optional extra; the run must still succeed
    assert (tmp_path / "plots" / "cdf-n20.png").exists()
