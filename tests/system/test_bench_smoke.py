"""The load benchmark runs end to end at small N, and what it reports holds together.

The run is a subprocess (``python bench/load.py --quick``), exactly as a user
types it: that checks the script entry point, and a hung run is killed by the
timeout with its whole process group.  The last tests stop a run with SIGTERM
and with SIGKILL and check that no server, receiver or redis-server survives.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reactor import BACKENDS

# Slow: the benchmarks themselves, briefly.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PEER = "asyncio-peer"
TLS = f"{BACKENDS[0]}-tls"  # the primary backend with TLS on its port


def _can_make_certificates() -> bool:
    try:
        import trustme  # noqa: F401
    except ImportError:
        return shutil.which("openssl") is not None
    return True


# In the benchmark's own order: the TLS system beside the backend it is compared with.
SYSTEMS = (
    [BACKENDS[0]]
    + ([TLS] if _can_make_certificates() else [])
    + [*BACKENDS[1:], PEER]
    + (["redis"] if shutil.which("redis-server") else [])
)


def run_quick(
    tmp_path: Path, *extra: str, systems: list[str] = SYSTEMS
) -> tuple[subprocess.CompletedProcess[str], Path]:
    out_dir = tmp_path / "out"
    cmd = [sys.executable, "bench/load.py", "--quick", "--quiet", "--systems", ",".join(systems),
           "--out", str(out_dir), *extra]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=100)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the quick benchmark run did not finish in 100 s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    return result, out_dir


def test_quick_run_delivers_everything_once_with_sane_latencies(tmp_path: Path) -> None:
    result, out_dir = run_quick(tmp_path)
    tag = "+".join(SYSTEMS) + "-n20-quick"
    json_path = out_dir / f"{tag}.json"
    assert json_path.exists(), f"no {json_path.name} in {sorted(os.listdir(out_dir))}"
    doc = json.loads(json_path.read_text())
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
        for key in ("per_recipient_ms", "kernel_ms"):
            p50, p99 = b[key]["p50"], b[key]["p99"]
            # Loopback at 20 clients: well under a second even on a loaded machine.
            assert 0 < p50 <= p99 < 1000, (name, key, p50, p99)
        assert all(step["lost"] == 0 for step in rnd["direct"]["steps"][:1])
        assert rnd["direct"]["duplicated"] == 0
        # 20 connections are too few to say anything per connection: n/a, not 0.000.
        assert rnd["memory"]["kb_per_conn"] is None
        assert b["server_cpu_per_1k"] is not None and not math.isnan(b["server_cpu_per_1k"])
        assert b["harness_cpu_per_1k"] > 0
    lines = result.stdout.splitlines()
    # The table names every system, fits 80 columns, and says where the files went.
    assert all(name in result.stdout for name in SYSTEMS)
    table = [line for line in lines if not line.startswith("wrote ")]
    assert max(map(len, table)) <= 80, max(table, key=len)
    assert f"Log levels: {BACKENDS[0]} WARNING" in result.stdout
    assert "server RSS KB/conn" in result.stdout and "0.000" not in _row(lines, "server RSS")
    for suffix in (".json", ".txt"):
        assert f"wrote {out_dir / (tag + suffix)}" in lines
    if TLS in SYSTEMS:  # its clients spoke TLS, through a receiver that says which
        assert f"{TLS}: C (" in doc["receiver"] or f"{TLS}: Python" in doc["receiver"]
        assert "OpenSSL" in doc["receiver"] or "ssl module" in doc["receiver"]
    # Goals are checked at their own N only, and one round has no round-to-round spread.
    assert "[MET " not in result.stdout and "[MISS]" not in result.stdout
    assert "Round to round" not in result.stdout
    if "redis" in SYSTEMS:
        assert "Harness check:" in result.stdout
        assert run["harness"]["worst_ratio_to_redis"] > 0
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return  # plots are an optional extra; the run must still succeed
    png = out_dir / f"{tag}-cdf-n20.png"
    assert png.exists() and f"wrote {png}" in lines


def test_the_python_receiver_still_works_as_the_fallback(tmp_path: Path) -> None:
    """Machines without a C compiler get the Python receive path: same records,
    over TLS too (its ssl module stands in for the C receiver's OpenSSL)."""
    wanted = [BACKENDS[0]] + ([TLS] if TLS in SYSTEMS else [])
    _, out_dir = run_quick(tmp_path, "--receiver", "python", "--skip", "direct",
                           systems=wanted)  # fmt: skip
    doc = json.loads(next(out_dir.glob("*.json")).read_text())
    assert doc["receiver"].startswith("Python")
    [rnd] = doc["runs"][0]["rounds"]
    for name in wanted:
        b = rnd[name]["broadcast"]
        assert "error" not in rnd[name]
        assert rnd[name]["storm"]["complete"] and rnd[name]["storm"]["lost"] == 0
        assert b["lost"] == 0 and b["duplicated"] == 0 and b["delivered"] == 20 * b["sent"] > 0
        assert 0 < b["kernel_ms"]["p50"] <= b["per_recipient_ms"]["p50"] < 1000


def test_the_tls_goal_is_checked_at_n_500_only_and_with_both_systems() -> None:
    """'TLS p50 <= 1.5x plain' appears where the broadcast goals do, when both ran."""
    from bench import report

    def run(n: int, rate: float, names: list[str], p50: dict[str, float]) -> dict[str, object]:
        row = {"broadcast p50 ms": 0.0, "broadcast p99 ms": 1.0, "errors": [],
               "broadcast lost": 0, "presence lost": 0, "login storm lost": 0}  # fmt: skip
        summary = {name: row | {"broadcast p50 ms": p50[name]} for name in names}
        return {"n": n, "rate": rate, "summary": summary}

    def tls_goals(r: dict[str, object]) -> list[dict[str, object]]:
        return [g for g in report.goals(r) if str(g["goal"]).startswith(TLS)]

    [g] = tls_goals(run(500, 150.0, [BACKENDS[0], TLS], {BACKENDS[0]: 2.0, TLS: 2.8}))
    assert g["met"] is True and g["goal"] == f"{TLS} p50 <= 1.5x {BACKENDS[0]} (N=500, 150/s)"
    assert str(g["detail"]).startswith("1.40x")
    [g] = tls_goals(run(500, 150.0, [BACKENDS[0], TLS], {BACKENDS[0]: 2.0, TLS: 3.2}))
    assert g["met"] is False
    assert not tls_goals(run(20, 150.0, [BACKENDS[0], TLS], {BACKENDS[0]: 2.0, TLS: 2.8}))
    assert not tls_goals(run(500, 150.0, [TLS], {TLS: 2.8}))


def _row(lines: list[str], label: str) -> str:
    return next(line for line in lines if line.startswith(label))


# -- no child outlives the benchmark -------------------------------------------


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of ``pid``, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[1]), fields[0].decode(), int(fields[19])


def _descendants(root: int) -> dict[int, int]:
    """Live descendants of ``root``: pid -> start time (to tell a reused pid apart)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            children.setdefault(st[0], []).append(int(entry))
            starts[int(entry)] = st[2]
    out: dict[int, int] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out[child] = starts[child]
            todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[2] == start and st[1] not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stopped_benchmark_leaves_no_child_behind(tmp_path: Path, sig: signal.Signals) -> None:
    # A long broadcast phase, so the run is surely mid-measurement when stopped.
    server = BACKENDS[0]
    wanted = [server] + (["redis"] if shutil.which("redis-server") else [])
    cmd = [sys.executable, "bench/load.py", "--quick", "--quiet", "--duration", "60",
           "--systems", ",".join(wanted), "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    me = _cmdline(proc.pid)
    seen: dict[int, int] = {}
    try:
        # Wait until the server and a receiver (C, or Python forked from us) are up.
        deadline = time.monotonic() + 30
        lines: list[str] = []
        while time.monotonic() < deadline:
            seen |= _descendants(proc.pid)
            lines = [_cmdline(p) for p in seen]
            server_up = any("-m reactor" in c for c in lines)
            if server_up and any("creceiver" in c or c == me for c in lines):
                break
            assert proc.poll() is None, "the benchmark ended before it was stopped"
            time.sleep(0.05)
        else:
            pytest.fail(f"no server and receiver among the benchmark's children: {lines}")
        seen |= _descendants(proc.pid)
        proc.send_signal(sig)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        left = {}
        while time.monotonic() < deadline:
            left = {p: _cmdline(p) for p, start in seen.items() if _alive(p, start)}
            if not left:
                break
            time.sleep(0.05)
        assert not left, f"children survived {sig.name}: {left}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid, start in (seen | _descendants(proc.pid)).items():  # never leak into other tests
            if _alive(pid, start):
                os.kill(pid, signal.SIGKILL)


def _cluster_available() -> bool:
    if shutil.which("redis-server") is None:
        return False
    try:
        import hiredis  # noqa: F401
        import redis  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _cluster_available(), reason="needs redis-server and the [cluster] extra")
def test_tiny_cluster_run_counts_redis_commands_per_operation(
    tmp_path: Path,
) -> None:
    """bench/cluster.py --quick with its fast phase only: Redis commands per DM
    and broadcast over two nodes.  (What its slow phases measure -- a node's
    death, a Redis stall -- the cluster tests check directly, in
    tests/cluster/test_cluster_failures.py; the full run is `python bench/cluster.py`.)"""
    out_dir = tmp_path / "out"
    cmd = [sys.executable, "bench/cluster.py", "--quick", "--quiet", "--out", str(out_dir),
           "--skip", "fanout,latency,throughput,death,stall"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    table = [line for line in proc.stdout.splitlines() if not line.startswith("wrote ")]
    assert all(len(line) <= 80 for line in table), proc.stdout
    doc = json.loads((out_dir / "cluster-n20-quick.json").read_text())
    assert not doc.get("errors"), doc.get("errors")
    assert doc["summary"]["integrity"] == {"lost": 0, "duplicated": 0, "false_echoes": 0}
    costs = doc["costs"]
    # A local DM needs no Redis; a cross-node one does; a broadcast is one script.
    assert costs["dm_local"]["redis"]["scripts"] < 0.1
    assert costs["dm_cross"]["redis"]["scripts"] >= 1
    assert 0.5 < costs["broadcast"]["redis"]["scripts"] < 2
    goals = {g["goal"]: g["met"] for g in doc["summary"]["goals"]}
    assert goals, doc["summary"]


@pytest.mark.skipif(not _cluster_available(), reason="needs redis-server and the [cluster] extra")
def test_the_node_death_benchmark_counts_every_notice_once(tmp_path: Path) -> None:
    """bench/node_death.py, tiny and with a short lease: it runs, and its
    check (every observer got each offline notice once) holds."""
    out = tmp_path / "death.json"
    cmd = [sys.executable, "bench/node_death.py", "--victims", "30", "--observers", "20",
           "--trials", "1", "--lease", "0.6", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    [trial] = json.loads(out.read_text())["trials"]
    assert trial["complete"] and trial["exactly_once"], trial
    assert trial["notices"] == trial["expected"] == 30 * 20
    assert 0.6 <= trial["last_s"] < 10, trial


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_the_fanout_profiler_runs_its_phases(tls: bool) -> None:
    """bench/profile_fanout.py, without valgrind, at small N: every phase
    runs to its end (each waits for its echoes and for every queue to be
    sent) and reports what it delivered -- over TLS too."""
    if tls and not _can_make_certificates():
        pytest.skip("no way to make a certificate")
    cmd = [sys.executable, "bench/profile_fanout.py", "--no-valgrind", "-n", "20",
           "--broadcasts", "4", "--dms", "40", *(["--tls"] if tls else [])]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    phases = dict(line.split()[1:] for line in done.stdout.splitlines()
                  if line.startswith("phase "))
    assert phases == {"broadcast": "80", "broadcast-queued": "80", "broadcast-pairs": "80",
                      "dm-one": "40", "dm-spread": "40"}
