"""Backends built on an event loop run on each loop the registry names (``--loop``).

uvloop (libuv's loop in C) is optional; without it installed, its cases skip.
``REACTOR_TEST_LOOP=uvloop python -m pytest`` runs every in-process test of
these backends on uvloop.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import replace
from typing import Any

import pytest

from reactor import make_server
from reactor.backends import BACKENDS, EVENT_LOOPS
from reactor.backends.base import Server
from tests.support import DEFAULT_TIMEOUT, TEST_CONFIG, Clients, accepts_loop, running_server

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


class CountingWrites:
    """A loop's transport that counts the writes handed to it."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@pytest.mark.parametrize(("backend", "loop"), CASES)
def test_logins_that_waited_in_the_backlog_together_reach_each_user_in_one_write(
        backend: str, loop: str) -> None:
    """Eight clients connect and send their names while the server is busy
    (a callback of its own holds the loop), so that they wait in the listen
    backlog together.  They are accepted together and their logins handled
    in one turn, so a user online gets the eight notices in one write -- as
    on a loop that accepts one connection per iteration (libuv's) it would
    not: a turn, and a write to every user, per login."""
    if loop != "asyncio" and importlib.util.find_spec(loop) is None:
        pytest.skip(f"{loop} is not installed")
    with running_server(backend, options={"loop": loop}) as server:
        clients = Clients(server.port)
        try:
            watcher = clients.login("Watcher")
            counted: list[CountingWrites] = []
            held, release = threading.Event(), threading.Event()

            def hold() -> None:  # on the loop's thread: nothing else runs meanwhile
                counted.append(count_writes_to(server, "Watcher"))
                held.set()
                release.wait(DEFAULT_TIMEOUT)

            server.call_soon_threadsafe(hold)
            assert held.wait(DEFAULT_TIMEOUT), "the loop did not run the callback"
            try:
                for i in range(8):
                    clients.connect().send(f"New{i}")  # connected: in the backlog
            finally:
                release.set()
            for i in range(8):
                watcher.expect(f"<User New{i} is online.>")
            assert counted[0].writes == 1
        finally:
            clients.close_all()


def count_writes_to(server: Server, username: str) -> CountingWrites:
    """Count from now on the writes to ``username``'s loop transport."""
    connection = next(c for c in server.chat.connections if c.username == username)
    transport: Any = connection.transport
    counting = CountingWrites(transport._transport)
    transport._transport = counting
    return counting


def test_an_unknown_loop_is_refused_by_name() -> None:
    for backend in LOOP_BACKENDS:
        with pytest.raises(ValueError, match="unknown loop 'nosuch'"):
            make_server(replace(TEST_CONFIG), backend, loop="nosuch")
