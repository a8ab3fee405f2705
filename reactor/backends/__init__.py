"""I/O backends, and the registry that names them.

Each backend only moves bytes between sockets and the chat logic; the
contract is :mod:`reactor.backends.base`.  The registry below is the one place
that lists them: the command line's ``--backend`` choices, the tests'
parametrization and the benchmark's systems are all built from it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reactor.backends.base import Server

# name -> "module:class"; the first is the default.  Imported only when used,
# so that an optional dependency of one backend never breaks the others.
REGISTRY: dict[str, str] = {
    "select": "reactor.backends.selector:SelectorServer",
    "threads": "reactor.backends.threads:ThreadsServer",
    "asyncio": "reactor.backends.aio:AsyncioServer",
}
BACKENDS: tuple[str, ...] = tuple(REGISTRY)
DEFAULT_BACKEND = BACKENDS[0]
# Event loops for the backends built on asyncio's interface (``--loop``).
EVENT_LOOPS = ("asyncio", "uvloop")


def server_class(name: str) -> type[Server]:
    try:
        target = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}") from None
    module_name, _, class_name = target.partition(":")
    cls: type[Server] = getattr(importlib.import_module(module_name), class_name)
    return cls
