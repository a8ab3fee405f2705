"""Socket set-up shared by both backends: listener, client options, limits."""

from __future__ import annotations

import errno
import logging
import resource
import socket

from reactor.config import ServerConfig

log = logging.getLogger("reactor")

# accept() errors that mean "out of a resource", not "this client is bad":
# the right answer is to stop accepting for a moment, never to spin or die.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept() errors about one connection that died in the backlog: skip it.
TRANSIENT_ACCEPT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
ACCEPT_RETRY_DELAY = 1.0  # seconds, as asyncio's selector_events does


def open_listener(config: ServerConfig) -> socket.socket:
    """Bind and listen; raises OSError with the operating system's reason."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    return socket.create_server((config.host, config.port), family=family, backlog=config.backlog)


def configure_client(sock: socket.socket, config: ServerConfig) -> None:
    """Options every client socket gets, whichever backend serves it."""
    # Chat lines are small and latency is the product: no Nagle delay.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if config.keepalive_idle > 0:
        # A client whose machine vanished sends no FIN or RST; keepalive
        # probes find it, and the failed read then counts as a drop.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, config.keepalive_idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, config.keepalive_interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, config.keepalive_count)


def raise_open_file_limit(max_clients: int) -> None:
    """Raise the soft descriptor limit toward what ``max_clients`` needs.

    The default soft limit is often 1024, which a server with 1024 clients
    plus its own descriptors would hit; the hard limit is usually far higher.
    """
    wanted = max_clients + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning(
            "Open-file limit %d is below the %d that --max-clients %d needs",
            target, wanted, max_clients,
        )


def peer_host(address: object) -> str:
    if isinstance(address, tuple) and address:
        return str(address[0])
    return "unknown"
