"""systemd's readiness protocol (``Type=notify``), without libsystemd.

The service manager puts the path of a unix datagram socket in
``$NOTIFY_SOCKET`` (``@`` first: Linux's abstract namespace); the service
sends it newline-separated ``KEY=VALUE`` lines (sd_notify(3)).  We send
``READY=1`` once listening, ``RELOADING=1`` (with ``MONOTONIC_USEC``, which
newer managers want) and ``READY=1`` again around a SIGHUP reload, and
``STOPPING=1`` when a shutdown begins.

Without ``$NOTIFY_SOCKET`` (not under systemd) each call does nothing.  A
send never blocks and never raises: these are called from signal handlers
and from the serving thread, and a service manager that has gone away must
not stop the server.
"""

from __future__ import annotations

import os
import socket
import time

VARIABLE = "NOTIFY_SOCKET"


def notify(*states: str) -> bool:
    """Send ``states`` (``"READY=1"`` ...) to the service manager; True if sent."""
    address = os.environ.get(VARIABLE)
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    message = "\n".join(states).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(message, address)
    except OSError:
        return False
    return True


def ready() -> bool:
    return notify("READY=1")


def reloading() -> bool:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping() -> bool:
    return notify("STOPPING=1")
