"""Backends built on an event loop run on each loop the registry names (``--loop``).

uvloop (libuv's loop in C) is optional; without it installed, its cases skip.
``REACTOR_TEST_LOOP=uvloop python -m pytest`` runs every in-process test of
these backends on uvloop.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest

from reactor import make_server
from reactor.backends import BACKENDS, EVENT_LOOPS
from tests.support import TEST_CONFIG, Clients, accepts_loop, running_server

LOOP_BACKENDS = [name for name in BACKENDS if accepts_loop(name)]
CASES = [(backend, loop) for backend in LOOP_BACKENDS for loop in EVENT_LOOPS]


@pytest.mark.parametrize(("backend", "loop"), CASES)
def test_the_conversation_on_every_event_loop(backend: str, loop: str) -> None:
    if loop != "asyncio" and importlib.util.find_spec(loop) is None:
        pytest.skip(f"{loop} is not installed")
    with running_server(backend, options={"loop": loop}) as server:
        clients = Clients(server.port)
        try:
            alice, bob = clients.login("Alice"), clients.login("Bob")
            alice.expect("<User Bob is online.>")
            alice.send('chat Bob "Hello Bob!"')
            alice.expect("<To Bob> Hello Bob!")
            bob.expect('<Message from Alice: "Hello Bob!">')
            bob.send("bye")
            bob.expect("<User Bob is offline.>")
            alice.expect("<User Bob is offline.>")
        finally:
            clients.close_all()


def test_an_unknown_loop_is_refused_by_name() -> None:
    for backend in LOOP_BACKENDS:
        with pytest.raises(ValueError, match="unknown loop 'nosuch'"):
            make_server(replace(TEST_CONFIG), backend, loop="nosuch")
