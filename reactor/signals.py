"""What the server does on a signal (``SignalHandlers``).

SIGINT and SIGTERM shut down cleanly (every client is told, connections
close, exit status 0); SIGHUP reloads what can be reloaded (the TLS
certificate and key: new connections use them, established ones keep
theirs; bad new files are one error line and the old ones stay); SIGUSR1
logs one status line.  The log never blocks serving (``reactor.logs``).
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

from reactor import notify

log = logging.getLogger("reactor")


def _always(level: int = logging.INFO) -> int:
    """A level at which a line asked for by the operator shows at any --log-level."""
    return max(level, log.getEffectiveLevel())


class SignalHandlers:
    """What each signal does.  Installed before the server exists, so that no
    signal can arrive in between with its default action (which for SIGHUP
    and SIGUSR1 is to die without telling anyone).

    Python runs these in the main thread between bytecodes -- for the select
    backend, in the middle of the event loop.  So they do no I/O and touch no
    loop state: stop() and reload() only set a flag and write a byte to the
    server's wakeup socket, and the serving thread does the work.  They log,
    which is acceptable only because the log never blocks: a record goes into
    a reentrant, non-blocking queue (reactor.logs), or is dropped.
    """

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.server: Any = None
        self.started = time.monotonic()
        self._stop_requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        actions = {
            signal.SIGINT: self.stop, signal.SIGTERM: self.stop,
            getattr(signal, "SIGHUP", None): self.reload,
            getattr(signal, "SIGUSR1", None): self.status,
        }
        for signum, action in actions.items():
            if signum is not None:
                self._previous[signum] = signal.signal(signum, action)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def attach(self, server: Any) -> None:
        self.server = server
        if self._stop_requested:
            server.stop()

    def stop(self, *_: object) -> None:
        notify.stopping()
        self._stop_requested = True
        if self.server is not None:
            self.server.stop()

    def reload(self, *_: object) -> None:
        log.log(_always(), "Reloading configuration")
        reload = getattr(self.server, "reload", None)
        if reload is None:
            log.log(_always(), "Nothing to reload")
            return
        # The serving thread reloads right after this request; a service
        # manager waiting for READY=1 again is not kept waiting for it.
        notify.reloading()
        try:
            reload()
        except Exception:  # never let a failed reload escape into the serving loop
            log.exception("Reload failed")
        finally:
            notify.ready()

    def status(self, *_: object) -> None:
        log.log(_always(), "%s", self.status_line())

    def status_line(self) -> str:
        chat = getattr(self.server, "chat", None)
        parts = []
        connections = getattr(chat, "connection_count", None)
        if connections is not None:
            parts.append(_count(connections, "connection"))
        whiteboard = getattr(chat, "whiteboard", None)
        if whiteboard is not None and hasattr(whiteboard, "__len__"):
            parts.append(f"{_count(len(whiteboard), 'user')} online")
        up = int(time.monotonic() - self.started)
        parts.append(f"{self.backend} backend, up {up // 3600}:{up // 60 % 60:02}:{up % 60:02}")
        return "Status: " + ", ".join(parts)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
