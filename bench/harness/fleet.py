"""Parent-side handle on the receiver processes that together hold N clients.

Clients are dealt round-robin to ``receivers`` processes: compiled C receivers
(``bench.harness.creceiver``) when ``exe`` is given, else forked Python ones
(fork, not spawn: the children start in milliseconds and need no importable
main).  Both answer the same commands with the same records, and both speak
TLS when ``tls`` is set (the C one only if it was built with OpenSSL).  Every
call here is bounded in time; ``close`` always leaves no child behind, which is
what makes Ctrl-C and errors safe for callers that use ``with Fleet(...)``.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from array import array
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.harness import wire
from bench.harness.creceiver import CReceiverProc
from bench.harness.procstat import cpu_seconds
from bench.harness.receiver import Share, receiver_main

_CTX = mp.get_context("fork")



def merge_records(reports: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Receivers' records as one: latency arrays concatenated, counters added."""
    out: dict[str, Any] = {}
    for rep in reports:
        for key, value in rep.items():
            if isinstance(value, array):
                out.setdefault(key, array("q")).extend(value)
            else:
                out[key] = out.get(key, 0) + value
    return out

class FleetError(RuntimeError):
    """A receiver stopped answering; the run for this system is void."""


class Fleet:
    def __init__(
        self,
        dialect: wire.Dialect,
        host: str,
        port: int,
        indices: list[int],
        receivers: int,
        window: int,
        exe: Path | None = None,
        delay_acks: bool = True,
        tls: bool = False,
    ) -> None:
        self.size = len(indices)
        count = max(1, min(receivers, len(indices)))
        self.conns: list[Any] = []  # multiprocessing Connections or CReceiverProcs
        self.procs: list[Any] = []
        try:
            for r in range(count):
                share = Share(dialect, host, port, tuple(indices[r::count]), max(1, window), tls)
                if exe is not None:
                    names = [wire.client_name(i) for i in share.indices]
                    proc = CReceiverProc(
                        exe,
                        share,
                        [wire.login(dialect, name) for name in names],
                        [wire.online_notice(name) for name in names],
                        delay_acks,
                    )
                    self.conns.append(proc)
                    self.procs.append(proc)
                    continue
                parent_end, child_end = _CTX.Pipe()
                proc = _CTX.Process(
                    target=receiver_main,
                    args=(share, child_end, parent_end),
                    daemon=True,
                    name=f"bench-receiver-{r}",
                )
                proc.start()
                child_end.close()
                self.conns.append(parent_end)
                self.procs.append(proc)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, *msg: object) -> None:
        for conn in self.conns:
            conn.send(msg)

    def ask(self, *msg: object, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Send ``msg`` to every receiver and gather the replies, in order."""
        self.send(*msg)
        replies = []
        for conn in self.conns:
            try:
                if not conn.poll(timeout):
                    raise FleetError(f"receiver did not answer {msg[0]!r} within {timeout} s")
                replies.append(conn.recv())
            except (EOFError, OSError) as exc:
                raise FleetError(f"receiver failed on {msg[0]!r}: {exc}") from exc
        return replies

    def measure(self, n_broadcast: int, n_direct: int, n_probes: int) -> None:
        """Arm recording in every receiver; returns once all are armed."""
        self.ask("measure", n_broadcast, n_direct, n_probes)

    def status(self) -> dict[str, Any]:
        """Counters summed over receivers; times are the latest of any receiver."""
        total: dict[str, Any] = {"samples": []}
        for rep in self.ask("status"):
            for key, value in rep.items():
                if key == "samples":
                    total["samples"].extend(value)
                elif key.startswith("last_"):
                    total[key] = max(total.get(key, 0), value)
                else:
                    total[key] = total.get(key, 0) + value
        return total

    def collect(self) -> dict[str, Any]:
        """Records of all receivers, concatenated; clears them in the receivers."""
        return merge_records(self.ask("collect", timeout=60.0))

    def cpu_seconds(self) -> float:
        """CPU the receivers used so far: the harness's own cost, reported beside the server's."""
        return sum(cpu_seconds(p.pid) or 0.0 for p in self.procs)

    def wait_for(
        self,
        done: Any,
        stall: float,
        cap: float,
        on_status: Any = None,
        every: float = 0.1,
    ) -> tuple[dict[str, Any], bool]:
        """Poll status until ``done(status)``; give up after ``stall`` s without progress
        (no counter changed) or ``cap`` s in all.  Returns (last status, finished)."""
        start = last_change = time.monotonic()
        last_key: tuple[int, ...] | None = None
        while True:
            st = self.status()
            if on_status is not None:
                on_status(st)
            if done(st):
                return st, True
            key = (st["logged_in"], st["notices"], st["b"], st["d"], st["p"], st["dropped"])
            now = time.monotonic()
            if key != last_key:
                last_key, last_change = key, now
            if now - last_change > stall or now - start > cap:
                return st, False
            time.sleep(every)

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("close",))
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 5.0
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)
        for conn in self.conns:
            conn.close()
        self.conns, self.procs = [], []
