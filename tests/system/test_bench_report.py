"""``bench/load.py --report``: a saved run printed again, and a wrong file refused in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "bench" / "reference"


def report(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "load.py"), "--report", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_a_saved_run_is_printed_again_with_its_goal_lines() -> None:
    result = report(REFERENCE / "load-n500.json")
    assert result.returncode == 0, result.stderr
    assert "Broadcast capacity" in result.stdout
    assert "Goals (ratios of capacities measured in the same round):" in result.stdout


@pytest.mark.parametrize("content", ['{"cluster": {}}', "[1, 2]", "{}", "not json"])
def test_a_file_that_is_not_a_saved_run_gets_one_line_and_no_traceback(
        tmp_path: Path, content: str) -> None:
    wrong = tmp_path / "wrong.json"
    wrong.write_text(content)
    result = report(wrong)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert str(wrong) in result.stderr


def test_the_cluster_phase_json_is_refused_as_not_a_run() -> None:
    result = report(REFERENCE / "cluster-extras-n500.json")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "is not the JSON of a bench/load.py run" in result.stderr


def test_a_system_name_as_wide_as_its_column_does_not_run_into_its_neighbour() -> None:
    result = report(REFERENCE / "load-n500-3systems.json")  # select, asyncio-uvloop, select-ws
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["select", "uvloop", "select-ws"])
    assert lines[header - 1].split() == ["asyncio-"]
    assert lines[header - 1].index("asyncio-") + len("asyncio-") == lines[header].index("uvloop") + len("uvloop")
    assert all(len(line) <= 80 for line in lines)


def test_the_report_names_the_commit_it_measured_when_the_run_recorded_it(tmp_path: Path) -> None:
    import json

    doc = json.loads((REFERENCE / "load-n500.json").read_text())
    doc.pop("commit", None)
    older = tmp_path / "older.json"
    older.write_text(json.dumps(doc))
    assert "Commit:" not in report(older).stdout
    doc["commit"] = "0123abc"
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(doc))
    assert report(newer).stdout.splitlines()[1] == "Commit: 0123abc"


def test_the_commit_is_this_checkout_s_head() -> None:
    from bench.harness.procstat import code_commit

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()
    assert code_commit().split()[0] == head


def test_a_report_piped_into_a_reader_that_stops_early_ends_without_a_traceback() -> None:
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone (as head does after its lines): every write fails
    try:
        done = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "load.py"), "--report",
             str(REFERENCE / "load-n500.json")],
            stdout=write_end, stderr=subprocess.PIPE, timeout=60, cwd=ROOT)
    finally:
        os.close(write_end)
    assert b"Traceback" not in done.stderr
