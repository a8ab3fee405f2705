"""reactor-chat server: the chat logic once, I/O backends behind one interface."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reactor.backends import BACKENDS, DEFAULT_BACKEND
from reactor.config import ServerConfig

if TYPE_CHECKING:
    from reactor.backends.base import Server

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "ServerConfig", "make_server"]


def make_server(config: ServerConfig, backend: str = DEFAULT_BACKEND,
                **options: object) -> Server:
    """Build and bind a server: :func:`reactor.app.make_server` (imported
    when called, so that importing one module of the package does not
    import them all)."""
    from reactor.app import make_server as build

    return build(config, backend, **options)  # type: ignore[arg-type]
