"""Pick a backend by name."""

from __future__ import annotations

from reactor.backends.base import Server
from reactor.config import ServerConfig

BACKENDS = ("select", "threads")


def make_server(config: ServerConfig, backend: str = "select") -> Server:
    """Bind a server of the named backend (raises OSError if the port is busy)."""
    if backend == "select":
        from reactor.backends.selector import SelectorServer

        return SelectorServer(config)
    if backend == "threads":
        from reactor.backends.threads import ThreadsServer

        return ThreadsServer(config)
    raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
