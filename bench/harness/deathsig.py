"""Children that die with the benchmark, even when it is SIGKILLed.

Linux's ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` asks the kernel to kill a process
when its parent dies, and it survives ``execve``.  ``wrap(cmd)`` prefixes a
command with this module run as a script, which sets it, checks the parent is
still the one that started it (it may have died in between), and ``exec``s the
command: same pid, so CPU and memory figures still read the server's own.
Called in a forked child, ``set_pdeathsig()`` does the same for that child.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def set_pdeathsig(sig: int = signal.SIGKILL) -> bool:
    """Ask to receive ``sig`` when the parent (thread) dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def wrap(cmd: list[str]) -> list[str]:
    """``cmd`` run so that it dies with this process (unchanged off Linux)."""
    if not sys.platform.startswith("linux"):
        return cmd
    return [sys.executable, "-S", os.path.abspath(__file__), str(os.getpid()), *cmd]


def main() -> None:
    parent, cmd = int(sys.argv[1]), sys.argv[2:]
    set_pdeathsig()
    if os.getppid() != parent:
        sys.exit(0)  # the benchmark died before the prctl: do not start an orphan
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
