"""Process facts read from /proc, the descriptor limit, and stopping processes.

Linux only, like the rest of the harness (it needs epoll anyway).  Readers
return ``None`` rather than raising when the process has gone, because a server
that crashed mid-run must still yield a report that says so.
"""

from __future__ import annotations

import os
import platform
import resource
import socket
import subprocess
from typing import NamedTuple

_TICKS = os.sysconf("SC_CLK_TCK")


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit.

    5,000 clients need more than 5,000 descriptors on the harness side; children
    forked later inherit the raised limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def ephemeral_ports() -> int | None:
    """How many local ports the kernel hands out to ``connect`` (None if unknown).

    Every harness client is one connection from 127.0.0.1 to the server's one
    port, so each takes a port of this range for as long as it is open.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return None
    return high - low + 1


class CpuTimes(NamedTuple):
    """CPU seconds a process spent in its own code (user) and in the kernel on
    its behalf (system): for a Python server, user is the interpreter's work."""

    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system


def cpu_times(pid: int) -> CpuTimes | None:
    """User and system CPU seconds of ``pid`` and all its threads so far."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; everything after the last
    # ')' is space separated, utime and stime being fields 14 and 15.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return CpuTimes(int(fields[11]) / _TICKS, int(fields[12]) / _TICKS)


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of ``pid`` and all its threads so far."""
    times = cpu_times(pid)
    return times.total if times is not None else None


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat), steal included.

    Busy machine time minus what the server and the harness used over the same
    interval is other people's load: the noise on a shared machine.
    """
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    # user nice system idle iowait irq softirq steal [guest guest_nice, already in user]
    busy = sum(fields[:3]) + sum(fields[5:8])
    return busy / _TICKS


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` (VmRSS), in bytes."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for redis-server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether some socket listens on TCP ``port`` (IPv4), per /proc/net/tcp."""
    want = f":{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            next(f, None)
            # Columns: sl local_address rem_address st ...; st 0A is LISTEN.
            return any(parts[1].endswith(want) and parts[3] == "0A" for parts in map(str.split, f))
    except OSError:
        return False


def code_commit() -> str:
    """The commit the benchmark runs, for the report: short hash, with a note
    when tracked files differ from it; "unknown" outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                 cwd=root, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return head + (" with uncommitted changes" if changed.strip() else "")


def machine_facts() -> dict[str, object]:
    """What a reader needs to judge the numbers: CPU, cores, kernel, Python, load."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        mem_gib = None
    redis = None
    try:
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=5
        ).stdout
        redis = out.split()[2].removeprefix("v=") if out else None
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis": redis,
        "loadavg_at_start": os.getloadavg(),
    }


def stop_process(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """SIGTERM the process group, then SIGKILL after ``grace`` seconds; reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, 15)
        except OSError:
            proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, 9)
            except OSError:
                proc.kill()
            proc.wait(grace)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (a supervisor's workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree
