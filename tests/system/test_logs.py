"""The log pipeline on its own, in a child process of a few lines: records
reach the output, and an output nobody reads stops neither the logging
thread's callers nor the exit (``logging.shutdown()`` at exit takes every
handler's lock).  The server's own log, over every backend, is tested in
``test_server_process.py``; these run in the fast loop, on every Python."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.faults import REPO
from tests.support import without_log_time

LOG_AND_STOP = """
import logging, sys
from reactor.logs import LogPipeline
logs = LogPipeline("INFO", "test", label="Test")
logs.start()
for index in range(int(sys.argv[1])):
    logging.getLogger("reactor").info("line %d", index)
print("stopped" if logs.stop(timeout=float(sys.argv[2])) else "gave up", file=sys.stderr)
"""


def _run(count: int, stop_timeout: float, stdout: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LOG_AND_STOP, str(count), str(stop_timeout)],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE,
        text=True, timeout=15,
    )


def test_every_record_is_written_in_order_and_stop_says_so() -> None:
    result = _run(3, 5.0, subprocess.PIPE)
    lines = [without_log_time(line) for line in result.stdout.splitlines()]
    assert lines == ["[Test] line 0", "[Test] line 1", "[Test] line 2"]
    assert result.stderr == "stopped\n"


def test_an_output_nobody_reads_does_not_keep_the_process_from_exiting() -> None:
    # A pipe that nobody reads: ~300 KB of log fills it, the writer thread
    # blocks in write(), stop() gives up, and the exit goes ahead.
    unread, output = os.pipe()
    try:
        result = _run(20_000, 0.2, output)
    finally:
        os.close(unread)
        os.close(output)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "gave up\n"
