"""The server's CPU split into user time (its own code) and system time (the kernel).

Recorded wherever the benchmark records the server's total CPU for a step;
the report shows direct-message CPU per message as user and system, with
ratios to Redis, and a run saved before the split prints them as missing.
"""

from __future__ import annotations

import copy
import json
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import report, summary, systems
from bench.harness.procstat import CpuTimes, cpu_seconds, cpu_times
from bench.systems import Running
from bench.workloads import server_cpu, server_cpu_seconds

REFERENCE = Path(__file__).resolve().parents[2] / "bench" / "reference" / "load-n500.json"
DM_USER, DM_SYSTEM, DM_TOTAL = "DM user CPU us/msg", "DM system CPU us/msg", "DM server CPU us/msg"

# Burns 0.2 s of CPU in the interpreter, says so, then sleeps on stdin: its
# counters stand still while the test reads them.  The clock is read once per
# 100,000 additions: reading it is a system call, whose time is system time.
BURNER = """
import sys, time
start = time.process_time()
while time.process_time() - start < 0.2:
    x = 0
    for i in range(100_000):
        x += i
print("burnt", flush=True)
sys.stdin.read()
"""


def test_a_process_that_runs_python_code_shows_mostly_user_time_adding_up_to_its_total() -> None:
    child = subprocess.Popen([sys.executable, "-c", BURNER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 30.0)
        assert ready and child.stdout.readline() == "burnt\n"
        times = cpu_times(child.pid)
        assert times is not None
        assert times.user >= 0.15 and times.user > 2 * times.system, times
        assert times.total == pytest.approx(cpu_seconds(child.pid))
        # --target with --target-pid: that process alone, split the same way.
        target = Running(systems.TARGET, "chat", "127.0.0.1", 1, child.pid, "unknown")
        assert target.cpu_times() == times
        assert target.cpu_seconds() == pytest.approx(times.total)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
    assert cpu_times(child.pid) is None  # gone: no figure, no exception
    without_pid = Running(systems.TARGET, "chat", "127.0.0.1", 1, None, "unknown")
    assert without_pid.cpu_times() is None and without_pid.cpu_seconds() is None


def test_a_step_records_user_and_system_cpu_that_add_up_to_the_total() -> None:
    before, after = CpuTimes(user=1.0, system=0.5), CpuTimes(user=1.75, system=0.75)
    step = server_cpu(before, after, 1000.0 / 500)  # 500 deliveries
    assert step["server_cpu_s"] == pytest.approx(1.0)
    assert (step["server_user_cpu_s"], step["server_system_cpu_s"]) == (0.75, 0.25)
    assert step["server_cpu_per_1k"] == pytest.approx(2.0)
    assert (step["server_user_cpu_per_1k"], step["server_system_cpu_per_1k"]) == (1.5, 0.5)
    # No pid (--target alone) or a server gone: every figure missing, none made up.
    assert set(server_cpu(None, after, 2.0).values()) == {None}
    # Nothing delivered: seconds still known, nothing per delivery.
    nothing = server_cpu(before, after, None)
    assert nothing["server_user_cpu_s"] == 0.75 and nothing["server_user_cpu_per_1k"] is None
    assert server_cpu_seconds(before, after) == {
        "server_cpu_s": 1.0, "server_user_cpu_s": 0.75, "server_system_cpu_s": 0.25,
    }  # fmt: skip


def _reference() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(REFERENCE.read_text())
    return doc


def _one_round_with_split(user_share: dict[str, float]) -> dict[str, Any]:
    """The reference run cut to one round, each capacity step's CPU split as given."""
    doc = _reference()
    run = doc["runs"][0]
    run["rounds"] = run["rounds"][:1]
    for name, res in run["rounds"][0].items():
        share = user_share.get(name, 0.5)
        for curve in ("broadcast_curve", "direct_curve"):
            step = res[curve]["cpu_step"]
            total = step["server_cpu_per_1k"]
            step["server_user_cpu_per_1k"] = total * share
            step["server_system_cpu_per_1k"] = total * (1 - share)
    return doc


def _row(text: str, label: str) -> list[str]:
    """The cells of the first table row named ``label``."""
    line = next(line for line in text.splitlines() if line.startswith(label))
    return line[report.LABEL_WIDTH :].split()


def test_the_report_shows_dm_user_and_system_cpu_per_message_with_ratios_to_redis() -> None:
    doc = _one_round_with_split({"select": 0.75, systems.REDIS: 0.25})
    summary.summarize(doc)
    s = doc["runs"][0]["summary"]
    for row in s.values():  # the split adds up to the total
        assert row[DM_USER] + row[DM_SYSTEM] == pytest.approx(row[DM_TOTAL])
        assert row["  user us/deliv."] + row["  system us/deliv."] == pytest.approx(
            row["server CPU us/deliv."]
        )
    narrow = report.table(doc)
    assert max(map(len, narrow.splitlines())) <= report.COLUMNS
    sel, red = s["select"], s[systems.REDIS]
    user_ratio = sel[DM_USER] / red[DM_USER]
    cells = _row(narrow, DM_USER)
    assert cells[:2] == [summary.fmt(sel[DM_USER]), f"({user_ratio:.2f}x)"]
    assert cells[-1] == summary.fmt(red[DM_USER])  # Redis: the anchor, no ratio
    assert _row(narrow, DM_SYSTEM)[0] == summary.fmt(sel[DM_SYSTEM])
    # The broadcast split and the DM total are in the wide table only.
    assert "  user us/deliv." not in narrow
    wide = report.table(doc, wide=True)
    for label in ("  user us/deliv.", "  system us/deliv.", DM_TOTAL, DM_USER, DM_SYSTEM):
        assert label in wide


def _without_split(node: Any) -> None:
    """A saved run as the benchmark wrote it before it split CPU time: the
    user and system keys removed everywhere."""
    if isinstance(node, dict):
        for key in [k for k in node if isinstance(k, str)
                    and k.startswith(("server_user_cpu", "server_system_cpu"))]:
            del node[key]
        for value in node.values():
            _without_split(value)
    elif isinstance(node, list):
        for value in node:
            _without_split(value)


def test_a_run_saved_before_the_split_prints_it_as_missing() -> None:
    doc = _reference()
    _without_split(doc)
    old = copy.deepcopy(doc)
    summary.summarize(doc)
    narrow = report.table(doc)
    for label in (DM_USER, DM_SYSTEM):
        rows = [line for line in narrow.splitlines() if line.startswith(label)]
        cells = [c for line in rows for c in line[report.LABEL_WIDTH :].split()]
        assert rows and set(cells) == {"-"}, rows
    assert max(map(len, narrow.splitlines())) <= report.COLUMNS
    # The totals it did record still print as before.
    assert _row(narrow, "server CPU us/deliv.")[0] != "-"
    assert _row(report.table(doc, wide=True), DM_TOTAL)[0] != "-"
    assert old["runs"][0]["rounds"] == doc["runs"][0]["rounds"]
