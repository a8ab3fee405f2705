"""reactor-chat server: the chat logic once, two I/O backends behind one interface."""

from reactor.config import ServerConfig
from reactor.server import BACKENDS, make_server

__all__ = ["BACKENDS", "ServerConfig", "make_server"]
