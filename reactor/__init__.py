"""reactor-chat server: the chat logic once, I/O backends behind one interface."""

from reactor.backends import BACKENDS, DEFAULT_BACKEND, make_server
from reactor.config import ServerConfig

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "ServerConfig", "make_server"]
