"""The load benchmark runs end to end at small N, and what it reports holds together.

The run is a subprocess (``python bench/load.py --quick``), exactly as a user
types it: that checks the script entry point, and a hung run is killed by the
timeout with its whole process group.  The last tests stop a run with SIGTERM
and with SIGKILL and check that no server, receiver or redis-server survives.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from reactor import BACKENDS

# Slow: the benchmarks themselves, briefly.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PEER = "asyncio-peer"
TLS = f"{BACKENDS[0]}-tls"  # the primary backend with TLS on its port
WEB = f"{BACKENDS[0]}-ws"  # the primary backend's web port, its clients on WebSocket


def _can_make_certificates() -> bool:
    try:
        import trustme  # noqa: F401
    except ImportError:
        return shutil.which("openssl") is not None
    return True


def _has_websockets() -> bool:
    try:
        import websockets  # noqa: F401
    except ImportError:
        return False
    return True


# In the benchmark's own order: the TLS and web systems beside the backend they are compared with.
SYSTEMS = (
    [BACKENDS[0]]
    + ([TLS] if _can_make_certificates() else [])
    + ([WEB] if _has_websockets() else [])
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
    [json_path] = out_dir.glob("*.json")
    tag = json_path.stem
    # Short enough that "wrote <dir>/<name>-curves.png" stays within 80 columns.
    assert tag.startswith("load-n20") and tag.endswith("-quick") and len(tag) <= 40, tag
    doc = json.loads(json_path.read_text())
    [run] = doc["runs"]
    assert run["systems"] == SYSTEMS
    for name in SYSTEMS:
        [rnd] = [r[name] for r in run["rounds"]]
        assert "error" not in rnd, rnd["error"]
        assert rnd["storm"]["complete"] and rnd["storm"]["lost"] == 0
        assert rnd["presence"]["lost"] == 0 and rnd["presence"]["duplicated"] == 0
        b = rnd["broadcast"]  # the first step of the broadcast ladder
        assert b["lost"] == 0 and b["duplicated"] == 0 and b["unsent"] == 0
        assert b["delivered"] == run["n"] * b["sent"]
        for key in ("per_recipient_ms", "kernel_ms"):
            p50, p99 = b[key]["p50"], b[key]["p99"]
            # Loopback at 20 clients: well under a second even on a loaded machine.
            assert 0 < p50 <= p99 < 1000, (name, key, p50, p99)
        for key in ("broadcast_curve", "direct_curve"):
            _check_search(rnd[key], run["config"], key)
        assert rnd["direct_curve"]["steps"][0]["lost"] == 0
        assert all(s["duplicated"] == 0 for s in rnd["direct_curve"]["steps"])
        # 20 connections are too few to say anything per connection: n/a, not 0.000.
        assert rnd["memory"]["kb_per_conn"] is None
        assert b["server_cpu_per_1k"] is not None and not math.isnan(b["server_cpu_per_1k"])
        assert b["harness_cpu_per_1k"] > 0
        # The server's CPU, split into user and system time, adds up to its total.
        for step, unit in ((b, "_per_1k"), (rnd["direct_curve"]["cpu_step"], "_per_1k"),
                           (rnd["storm"], "_s")):  # fmt: skip
            user, system = step[f"server_user_cpu{unit}"], step[f"server_system_cpu{unit}"]
            assert user >= 0 and system >= 0
            assert user + system == pytest.approx(step[f"server_cpu{unit}"]), (name, step)
    lines = result.stdout.splitlines()
    # The report names every system, fits 80 columns, and says where the files went.
    assert all(name in result.stdout for name in SYSTEMS)
    table = [line for line in lines if not line.startswith("wrote ")]
    assert max(map(len, table)) <= 80, max(table, key=len)
    assert f"Log levels: {BACKENDS[0]} WARNING" in result.stdout
    assert "server RSS KB/conn" in result.stdout and "0.000" not in _row(lines, "server RSS")
    for label in ("DM user CPU us/msg", "DM system CPU us/msg"):
        assert "-" not in _row(lines, label).removeprefix(label).split()
    # One capacity table per workload, with every system in it.
    for heading in ("Broadcast capacity:", "Direct message capacity:"):
        at = next(i for i, line in enumerate(lines) if line.startswith(heading))
        assert [line.split()[0] for line in lines[at + 2 : at + 2 + len(SYSTEMS)]] == SYSTEMS
    # The saved report is what was printed; the wide table is beside it.
    saved = (out_dir / f"{tag}.txt").read_text().splitlines()
    assert saved == table
    wide = (out_dir / f"{tag}-wide.txt").read_text()
    assert "  harness-stamped p50" in wide and "  harness-stamped p50" not in result.stdout
    for suffix in (".json", ".txt", "-wide.txt"):
        assert any(line.startswith("wrote ") and line.endswith(tag + suffix) for line in lines)
    if TLS in SYSTEMS:  # its clients spoke TLS, through a receiver that says which
        assert f"{TLS}: C (" in doc["receiver"] or f"{TLS}: Python" in doc["receiver"]
        assert "OpenSSL" in doc["receiver"] or "ssl module" in doc["receiver"]
    # Goals are not judged on 20 clients, and one round has no round-to-round spread.
    assert "Goals: not judged below N = 100" in result.stdout
    assert not any(f"[{mark}" in result.stdout for mark in ("MET", "MISSED", "UNSURE"))
    assert "Round to round" not in result.stdout
    if "redis" in SYSTEMS:
        assert "Harness check:" in result.stdout
        # Steps this short may give Redis no 10 ms CPU tick at all: then no ratio.
        worst = run["harness"]["worst_ratio_to_redis"]
        assert worst is None or worst > 0
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return  # plots are an optional extra; the run must still succeed
    for suffix in ("-curves.png", "-cdf.png"):
        png = out_dir / f"{tag}{suffix}"
        assert png.exists()
        assert any(line.startswith("wrote ") and line.endswith(png.name) for line in lines)


def _check_search(found: dict[str, Any], config: dict[str, Any], key: str) -> None:
    """A capacity search as bench/capacity.py defines it: the ladder in order up to
    the first failure, then bisections strictly inside the bracket; the capacity
    is the highest rate that passed, and a passing step kept the objective."""
    ladder = config["ladder"] if key == "broadcast_curve" else config["dm_ladder"]
    objective = config["objective_ms"] if key == "broadcast_curve" else config["dm_objective_ms"]
    tries = found["steps"]
    assert isinstance(tries, list) and isinstance(ladder, list) and tries
    for first, again in itertools.pairwise(tries):  # a retry repeats its rate
        assert not first.get("retried") or (again["offered"] == first["offered"]
                                            and first["retry"] and not first["ok"])  # fmt: skip
    steps = [s for s in tries if not s.get("retried")]
    offered = [s["offered"] for s in steps]
    climbed = next((i + 1 for i, s in enumerate(steps) if not s["ok"]), len(steps))
    assert offered[:climbed] == ladder[:climbed]
    for s in tries:
        assert s["ok"] == (s["lost"] == 0 and s["unsent"] == 0
                           and s["kernel_ms"]["p99"] <= objective), s  # fmt: skip
    passed = [s["offered"] for s in steps if s["ok"]]
    assert found["capacity"] == max(passed, default=0.0)
    # Reached: some rate failed, and the step that decided the lowest failing
    # rate measured the server, not the harness (bench.capacity.harness_limit).
    failed = [s for s in tries if s["offered"] == found["first_failed"]]
    harness = bool(failed and failed[-1].get("harness_limit"))
    assert found["reached"] == (not all(s["ok"] for s in steps) and not harness)
    assert bool(found.get("harness_limit")) == harness
    assert len(steps) <= len(ladder) + int(config["bisections"])


@pytest.mark.skipif(not shutil.which("redis-server"), reason="the sweep table's ratios need Redis")
def test_a_tiny_sweep_reports_against_n(tmp_path: Path) -> None:
    """--sweep: every N measured, a table against N, one plot against N."""
    result, out_dir = run_quick(tmp_path, "--sweep", "10,20", "--skip", "direct,presence",
                                systems=[BACKENDS[0], "redis"])  # fmt: skip
    lines = result.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("Against N"))
    header = next(i for i in range(at, len(lines)) if lines[i].split()[:2] == ["N", "system"])
    rows = [line.split()[:2] for line in lines[header + 1 : header + 5]]
    assert rows == [["10", BACKENDS[0]], ["10", "redis"], ["20", BACKENDS[0]], ["20", "redis"]]
    doc = json.loads(next(out_dir.glob("sweep*.json")).read_text())
    assert [run["n"] for run in doc["runs"]] == [10, 20]
    for run in doc["runs"]:
        for name in (BACKENDS[0], "redis"):
            _check_search(run["rounds"][0][name]["broadcast_curve"], run["config"],
                          "broadcast_curve")  # fmt: skip


def test_a_broadcast_step_at_large_n_is_bounded_and_at_n_500_as_before() -> None:
    """A step lasts long enough for 16 broadcasts, at most --step-max: at N = 10,000
    a low rate (one broadcast a second, or bisections below the ladder) stays
    within the sweep's time; N = 500's steps keep their lengths."""
    from bench.workloads import Config, broadcast_step_seconds

    standard = Config(n=500, step=1.0, min_broadcasts=16, max_step=8.0)
    assert [broadcast_step_seconds(standard, d) for d in (10e3, 5e3, 2.5e3, 1.25e3)] == [
        1.0, 1.6, 3.2, 6.4]  # fmt: skip
    large = Config(n=10_000, step=1.0, min_broadcasts=16, max_step=8.0)
    assert [broadcast_step_seconds(large, d) for d in (2.5e3, 10e3, 40e3, 160e3)] == [
        8.0, 8.0, 4.0, 1.0]  # fmt: skip


def test_a_sweep_of_select_and_redis_is_named_sweep_and_others_by_their_systems() -> None:
    """Short file names: what ``--out bench/reference`` keeps."""
    from bench.load import file_tag, parse_args

    def tag(*argv: str) -> str:
        args = parse_args(list(argv))
        ns = [int(x) for x in args.sweep.split(",")] if args.sweep else [args.clients]
        return file_tag(args, ns)

    assert tag("--systems", f"{BACKENDS[0]},redis", "--sweep", "500,10000") == "sweep"
    assert tag("--systems", f"{BACKENDS[0]},threads,redis", "--sweep", "500") == \
        f"sweep-{BACKENDS[0]}+threads+redis"
    assert tag("-n", "500") == "load-n500"
    assert tag("--systems", f"{BACKENDS[0]},redis", "-n", "500") == f"load-n500-{BACKENDS[0]}+redis"


def test_the_capacity_search_climbs_the_ladder_then_bisects() -> None:
    """With a system that keeps its objective up to 30,000/s: the ladder up to
    the first failure, then geometric bisections inside the bracket."""
    from bench.capacity import search

    seen: list[float] = []

    def measure(rate: float) -> dict[str, object]:
        seen.append(rate)
        return {"ok": rate <= 30_000}

    found = search(measure, [10e3, 20e3, 40e3, 80e3], bisections=3)
    assert seen[:3] == [10e3, 20e3, 40e3]
    assert len(seen) == 6 and all(20e3 < r < 40e3 for r in seen[3:])
    assert found["capacity"] == max(r for r in seen if r <= 30_000)
    assert 26e3 < found["capacity"] <= 30e3 and found["reached"]
    assert found["first_failed"] == min(r for r in seen if r > 30_000)


def test_a_slow_ladder_step_is_measured_again_and_a_loss_is_not() -> None:
    """One stall of a shared machine does not end the climb; a loss does."""
    from bench.capacity import search

    stalls = {20e3}

    def measure(rate: float) -> dict[str, object]:
        if rate in stalls:
            stalls.discard(rate)  # slow once, fine when measured again
            return {"ok": False, "retry": True}
        return {"ok": rate <= 30_000, "retry": True}

    found = search(measure, [10e3, 20e3, 40e3], bisections=0)
    assert [(s["offered"], s["ok"]) for s in found["steps"]] == [
        (10e3, True), (20e3, False), (20e3, True), (40e3, False), (40e3, False)]  # fmt: skip
    assert found["steps"][1]["retried"] and found["capacity"] == 20e3
    lossy = search(lambda rate: {"ok": rate < 15e3, "retry": False}, [10e3, 20e3, 40e3], 0)
    assert [s["offered"] for s in lossy["steps"]] == [10e3, 20e3]


def test_the_capacity_search_reports_a_lower_bound_and_goes_below_the_ladder() -> None:
    from bench.capacity import search

    top = search(lambda rate: {"ok": True}, [1e3, 2e3], bisections=3)
    assert top["capacity"] == 2e3 and not top["reached"] and len(top["steps"]) == 2
    low = search(lambda rate: {"ok": rate <= 300}, [1e3, 2e3], bisections=2)
    assert [s["offered"] for s in low["steps"]] == [1e3, 500.0, 250.0]
    assert low["capacity"] == 250.0 and low["reached"]
    # A step that leaves the system unmeasurable ends the search there.
    broken = search(lambda rate: {"ok": False, "broken": "dropped"}, [1e3, 2e3], bisections=3)
    assert len(broken["steps"]) == 1 and broken["capacity"] == 0.0


def test_a_goal_is_met_missed_or_unsure_by_what_each_round_says() -> None:
    from bench import summary, verdicts

    def curve(cap: float, reached: bool = True) -> dict[str, object]:
        return {"capacity": cap, "reached": reached, "steps": []}

    def run(pairs: list[tuple[float, float]], n: int = 500) -> dict[str, object]:
        rounds = [{BACKENDS[0]: {"broadcast_curve": curve(a)}, TLS: {"broadcast_curve": curve(b)}}
                  for a, b in pairs]  # fmt: skip
        return {"n": n, "systems": [BACKENDS[0], TLS], "rounds": rounds}

    def tls_goal(r: dict[str, object]) -> dict[str, object]:
        [g] = [g for g in verdicts.goals(r, summary.GOAL_MIN_N) if str(g["goal"]).startswith(TLS)]
        return g

    g = tls_goal(run([(50e3, 35e3), (40e3, 30e3), (60e3, 40e3)]))
    assert g["goal"] == f"{TLS} broadcast capacity >= 0.6x {BACKENDS[0]}"
    assert g["verdict"] == "MET" and g["detail"] == "0.70x (rounds 0.70x, 0.75x, 0.67x)"
    assert tls_goal(run([(50e3, 20e3), (40e3, 20e3)]))["verdict"] == "MISSED"
    assert tls_goal(run([(50e3, 35e3), (50e3, 25e3)]))["verdict"] == "UNSURE"
    assert not [g for g in verdicts.goals(run([(50e3, 35e3)], n=20), summary.GOAL_MIN_N)]
    # A capacity past the ladder's top is a lower bound: it can meet a goal, not miss it.
    bound = verdicts.round_ratio(curve(20e3), curve(160e3, reached=False))
    assert bound == (0.0, 0.125)
    assert verdicts.verdict([verdicts.round_ratio(curve(160e3, False), curve(80e3))], 0.9) == "MET"
    assert verdicts.verdict([bound], 0.9) == "MISSED"
    assert verdicts.verdict([bound], 0.1) == "UNSURE"


def test_a_goal_line_states_what_the_rounds_support_bounds_included() -> None:
    """The headline is the median of the rounds' true ratios as far as the
    rounds bound it (low ends' median to high ends' median), never the one
    round that happened to be measured; then every round, in order."""
    from bench import verdicts

    def curve(cap: float, reached: bool = True) -> dict[str, object]:
        return {"capacity": cap, "reached": reached, "first_failed": None, "steps": []}

    def line(pairs: list[tuple[dict[str, object], dict[str, object]]]) -> dict[str, object]:
        rounds = [{TLS: {"broadcast_curve": a}, BACKENDS[0]: {"broadcast_curve": b}}
                  for a, b in pairs]  # fmt: skip
        run = {"n": 500, "systems": [BACKENDS[0], TLS], "rounds": rounds}
        [g] = [g for g in verdicts.goals(run, 100) if str(g["goal"]).startswith(TLS)]
        return g

    top = curve(5.12e6, reached=False)  # past the ladder's top: a lower bound
    # All measured: the median, every round beside it.
    g = line([(curve(3e6), curve(4e6)), (curve(2e6), curve(4e6)), (curve(1e6), curve(4e6))])
    assert (g["verdict"], g["detail"]) == ("UNSURE", "0.50x (rounds 0.75x, 0.50x, 0.25x)")
    # All upper bounds (the anchor passed the top every round): an upper bound.
    g = line([(curve(2.79e6), top), (curve(2.79e6), top), (curve(1e6), top)])
    assert (g["verdict"], g["detail"]) == ("MISSED", "<=0.54x (rounds <=0.54x, <=0.54x, <=0.20x)")
    # All lower bounds (the system passed the top every round): a lower bound.
    g = line([(top, curve(4e6)), (top, curve(2e6)), (top, curve(8e6))])
    assert (g["verdict"], g["detail"]) == ("MET", ">=1.28x (rounds >=1.28x, >=2.56x, >=0.64x)")
    # The reference run's select-tls rounds: two upper bounds and one bad
    # round give "at most 0.54x", not the bad round's 0.15x.
    g = line([(curve(2.79e6), top), (curve(2.79e6), top), (curve(538e3), curve(3.62e6))])
    assert (g["verdict"], g["detail"]) == ("MISSED", "<=0.54x (rounds <=0.54x, <=0.54x, 0.15x)")
    assert g["median"] == [0.0, pytest.approx(2.79 / 5.12)]
    # Mixed, lower bounds and a measure: a lower bound.
    g = line([(top, curve(4.7e6)), (top, curve(2.15e6)), (curve(3.62e6), curve(2.35e6))])
    assert g["detail"] == ">=1.54x (rounds >=1.09x, >=2.38x, 1.54x)"
    # Bounds in both directions around a measure pin the median exactly.
    g = line([(top, curve(4.27e6)), (curve(2e6), top), (curve(1.6e6), curve(2e6))])
    assert (g["verdict"], g["detail"]) == ("UNSURE", "0.80x (rounds >=1.20x, <=0.39x, 0.80x)")
    # Disagreeing rounds, an even count: a bound between the middle ones.
    g = line([(curve(1.2e6), curve(4e6)), (curve(2e6), top), (top, curve(4e6)),
              (curve(3.6e6), curve(4e6))])  # fmt: skip
    assert g["detail"] == "0.60-0.65x (rounds 0.30x, <=0.39x, >=1.28x, 0.90x)"
    # A round where both passed the top compares nothing; one round has no spread.
    g = line([(top, top), (curve(3e6), curve(4e6))])
    assert g["detail"].startswith("0.75x (rounds -, 0.75x); both passed the ladder's top")
    assert line([(curve(3e6), curve(4e6))])["detail"] == "0.75x (1 round: no spread to judge by)"
    assert line([(top, top)])["detail"].startswith("no round measured both capacities")


def test_a_step_the_harness_could_not_carry_makes_the_capacity_a_lower_bound() -> None:
    """Where the harness, not the server, failed a step (the sender late on its own
    schedule, or the harness leaving the server less than a core of a full
    machine), the capacity is only a bound and the goal line says whose limit it was."""
    from bench import capacity, summary, verdicts

    def step(**fields: object) -> dict[str, object]:
        base = {"ok": False, "lost": 0, "sender_lag_ms": {"p99": 1.0}, "sender_held_back": 0,
                "machine_cores": 1.9, "server_cores": 1.0, "harness_cores": 0.85,
                "foreign_cores": 0.05}  # fmt: skip
        return base | fields

    limit = capacity.harness_limit
    assert limit(step(), 20.0, 2) is None  # the server had its core: its own limit
    crowded = step(server_cores=0.7, harness_cores=1.15)
    assert limit(crowded, 20.0, 2) == (
        "1.90 of 2 cores busy: the server had 0.70, the harness 1.15, other processes 0.05")
    assert limit(crowded | {"machine_cores": 1.5}, 20.0, 2) is None  # cores to spare
    # Other people's load may be what crowded the server out: not the harness's doing.
    assert limit(crowded | {"foreign_cores": 0.5, "harness_cores": 0.7}, 20.0, 2) is None
    assert limit(crowded | {"lost": 3}, 20.0, 2) is None  # a loss is the server's
    assert limit(crowded | {"ok": True}, 20.0, 2) is None
    assert "sender fell behind" in str(limit(step(sender_lag_ms={"p99": 45.0}), 20.0, 2))
    # Late because the server stopped taking what was sent: the server's limit.
    assert limit(step(sender_lag_ms={"p99": 45.0}, sender_held_back=3), 20.0, 2) is None

    def measure(rate: float) -> dict[str, object]:
        return {"ok": rate < 3e6, "harness_limit": "the harness" if rate >= 3e6 else None}

    found = capacity.search(measure, [1.28e6, 2.56e6, 5.12e6], bisections=1)
    assert found["capacity"] == 2.56e6 and not found["reached"]
    assert found["harness_limit"] == {"rate": 3.62e6, "why": "the harness"}

    def curve(cap: float, limited: bool) -> dict[str, object]:
        harness = {"rate": 3.62e6, "why": "the harness"} if limited else None
        return {"capacity": cap, "reached": not limited, "harness_limit": harness, "steps": []}

    def goal(select: float) -> dict[str, object]:
        rounds = [{BACKENDS[0]: {"broadcast_curve": curve(select, False)},
                   "redis": {"broadcast_curve": curve(2.56e6, True)}}]  # fmt: skip
        [g] = verdicts.goals({"n": 500, "systems": [BACKENDS[0], "redis"], "rounds": rounds},
                             summary.GOAL_MIN_N)  # fmt: skip
        return g

    # Redis carried at least 2,560k: select's own 2,400k is at most 0.94x, which
    # judges nothing against 0.9x; its own 2,200k (at most 0.86x) misses it.
    assert goal(2.4e6)["verdict"] == "UNSURE" and goal(2.2e6)["verdict"] == "MISSED"
    assert "the harness's limit was reached (redis in round 1 at 3620k)" in goal(2.4e6)["detail"]
    # Both past the ladder's top: nothing compared, and the line says why.
    topped = {"capacity": 5.12e6, "reached": False, "first_failed": None, "steps": []}
    both = {"n": 500, "systems": [BACKENDS[0], "redis"],
            "rounds": [{BACKENDS[0]: {"broadcast_curve": topped},
                        "redis": {"broadcast_curve": topped}}]}  # fmt: skip
    [g] = verdicts.goals(both, summary.GOAL_MIN_N)
    assert g["verdict"] is None and "both passed the ladder's top in round 1" in g["detail"]


def test_help_shows_every_default_and_explains_every_option() -> None:
    done = subprocess.run([sys.executable, "bench/load.py", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for option in ("--no-plots", "--target-dialect", "--wide", "--quick", "--objective"):
        assert f"{option} " in text
    assert "write no PNG plots" in text and "what --target speaks" in text
    # 80 columns, and no system or option name split at its hyphen.
    assert max(map(len, done.stdout.splitlines())) <= 80
    assert "select-ws" in text and "--web-port" in text
    for default in ("-n CLIENTS, --clients CLIENTS clients per system (default: 500)",
                    "interleaved rounds (default: 3)", "(default: 20.0)", "(default: 0)"):
        assert default in text, default  # fmt: skip


def test_the_cluster_stall_lines_say_which_stall_they_are() -> None:
    """Each stall's line says which it is (its number, how long Redis was
    stopped), and the lines under it which DM got which answer."""
    from bench import cluster_report

    trial = {"answers": {"echo": 3, "not delivered": 1}, "disconnected": 0, "stalled_s": 1.004,
             "offline_notices": 0,
             "dms": {"during, same node": "echo", "during, other node": "not delivered",
                     "after, same node": "echo", "after, other node": "echo"}}  # fmt: skip
    older = {k: v for k, v in trial.items() if k not in ("dms", "stalled_s")}  # an older JSON
    doc = {"n": 20, "rounds": 1, "machine": {"cores": 2, "cpu": "x", "redis": "7"},
           "stall": {"trials": [trial, older], "stall_s": 1.0, "users": 6,
                     "offline_notices": 0, "false_echoes": 0}}  # fmt: skip
    cluster_report.summarize(doc)
    lines = cluster_report.table(doc).splitlines()
    at = lines.index("  stall 1 of 2 (1.00 s): DM answers echo 3, not delivered 1; disconnected 0")
    assert lines[at + 1 : at + 4] == [
        "    sent during it: same node echo, other node not delivered",
        "    sent after it: same node echo, other node echo",
        "  stall 2 of 2: DM answers echo 3, not delivered 1; disconnected 0",
    ]


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
    cmd = [sys.executable, "bench/load.py", "--quick", "--quiet", "--step", "60",
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


@pytest.mark.parametrize("wire", ["plain", "tls", "web"])
def test_the_fanout_profiler_runs_its_phases(wire: str) -> None:
    """bench/profile_fanout.py, without valgrind, at small N: every phase
    runs to its end (each waits for its echoes and for every queue to be
    sent) and reports what it delivered -- over TLS too, and to receivers
    over WebSocket."""
    if wire == "tls" and not _can_make_certificates():
        pytest.skip("no way to make a certificate")
    if wire == "web":
        pytest.importorskip("websockets")
    cmd = [sys.executable, "bench/profile_fanout.py", "--no-valgrind", "-n", "20",
           "--broadcasts", "4", "--dms", "40", *([f"--{wire}"] if wire != "plain" else [])]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    phases = dict(line.split()[1:] for line in done.stdout.splitlines()
                  if line.startswith("phase "))
    assert phases == {"broadcast": "80", "broadcast-queued": "80", "broadcast-pairs": "80",
                      "broadcast-eights": "80", "dm-one": "40", "dm-spread": "40"}
