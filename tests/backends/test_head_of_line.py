"""A sender is never held up by someone else's slow reader, on every backend,
on one server and in a cluster.

Shout sends a direct message to Sloth, who is not reading (its queue on the
server is not empty, so the message waits for Sloth's connection to take it,
up to the delivery timeout), then one to Hare, who reads.  Hare has the
message while the one to Sloth still waits; Shout's replies still come in
command order once Sloth reads.  The delivery timeout is an hour: had the
second message waited for the first, Hare would wait that long.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from reactor import BACKENDS
from reactor.backends.base import Server
from reactor.flow import FloodLimits
from tests.cluster_support import (  # noqa: F401  (redis_server: a fixture)
    Client,
    RedisServer,
    nodes,
    redis_server,
)
from tests.support import Clients, LineClient, running_server, wait_until

KiB = 1024
BIG = "z" * 4000  # a broadcast line near the default line limit
PER_ROUND = 50


def _queued_for(server: Server, name: str) -> int:
    found = server.chat.whiteboard.lookup(name)
    assert found is not None, f"{name} is not online"
    return int(found[1].transport.queued)  # type: ignore[attr-defined]


def _most_a_kernel_takes() -> int:
    """The most a socket's send buffer grows to (Linux's tcp_wmem), or a guess."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as limits:
            return int(limits.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 << 20


def _fill_sloths_queue(server: Server, shout: LineClient, hare: LineClient) -> None:
    """Broadcast until Sloth, who does not read, has more output waiting on
    the server than its socket could ever take: a message queued behind it
    cannot reach the kernel before Sloth reads.  Shout and Hare read
    everything they are sent."""
    enough = _most_a_kernel_takes()
    for _ in range(1000):
        if _queued_for(server, "Sloth") > enough:
            return
        shout.send_raw(f'broadcast "{BIG}"\n'.encode() * PER_ROUND)
        shout.expect(*[f"<To everyone> {BIG}"] * PER_ROUND)
        hare.expect(*[f'<Broadcast from Shout: "{BIG}">'] * PER_ROUND)
    raise AssertionError("Sloth's queue never filled")


# Everything far from the point: no flood control, no time-outs that a
# slow test machine could reach.
PATIENT = {"flood": FloodLimits(enabled=False), "delivery_timeout": 3600,
           "output_limit": 256 << 20, "output_hard_limit": 256 << 20,
           "slow_consumer_grace": 3600}


@contextlib.contextmanager
def _shout_and_sloth(server: Server) -> Iterator[tuple[Clients, LineClient, Client]]:
    """Shout, and Sloth with a small receive buffer from the start, which the
    kernel never grows: the window stays small while Sloth does not read."""
    clients = Clients(server.port)
    sloth = Client(server.port, rcvbuf=4 * KiB)
    try:
        shout = clients.login("Shout")
        sloth.send("Sloth")
        sloth.expect("<User Sloth is online.>")
        shout.expect("<User Sloth is online.>")
        yield clients, shout, sloth
    finally:
        sloth.close()
        clients.close_all()


def _sloth_reads_and_is_answered_last(sloth: Client, shout: LineClient, *echoes: str) -> None:
    """The message to Sloth was still waiting: it is delivered (not timed
    out, not refused) only now that Sloth reads, and Shout's replies come
    in command order."""
    sloth.read_until(lambda line: line == '<Message from Shout: "are you there?">',
                     timeout=60)
    shout.expect("<To Sloth> are you there?", *echoes)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_message_to_a_slow_reader_does_not_hold_up_the_senders_next_message(
    backend: str,
) -> None:
    with running_server(backend, **PATIENT) as server, \
            _shout_and_sloth(server) as (clients, shout, sloth):
        hare = clients.login("Hare")
        shout.expect("<User Hare is online.>")
        _fill_sloths_queue(server, shout, hare)

        shout.send('chat Sloth "are you there?"')
        shout.send('chat Hare "hello"')
        hare.expect('<Message from Shout: "hello">')
        assert _queued_for(server, "Sloth")
        _sloth_reads_and_is_answered_last(sloth, shout, "<To Hare> hello")
        wait_until(lambda: _queued_for(server, "Sloth") == 0, message="Sloth's queue read")


@pytest.mark.parametrize("backend", BACKENDS)
def test_in_a_cluster_a_message_to_a_slow_reader_holds_up_no_message_here_or_elsewhere(
    backend: str, redis_server: RedisServer,  # noqa: F811
) -> None:
    # Patient Redis calls and a long lease: this is about order, not about
    # Redis failing on a loaded machine.
    with nodes([backend, backend], redis_server.url, 6.0, patient=True,
               **PATIENT) as (here, there), \
            _shout_and_sloth(here) as (clients, shout, sloth):
        elsewhere = Clients(there.port)
        try:
            hare = elsewhere.login("Hare")
            robin = clients.login("Robin")
            shout.read_until(lambda line: line == "<User Robin is online.>")
            hare.read_until(lambda line: line == "<User Robin is online.>")
            _fill_sloths_queue(here, shout, hare)

            shout.send('chat Sloth "are you there?"')
            shout.send('chat Hare "hello"')
            shout.send('chat Robin "hi"')
            hare.expect('<Message from Shout: "hello">')
            # (Robin reads the broadcasts before it, and so takes it.)
            robin.read_until(lambda line: line == '<Message from Shout: "hi">', timeout=60)
            assert _queued_for(here, "Sloth")
            _sloth_reads_and_is_answered_last(sloth, shout, "<To Hare> hello", "<To Robin> hi")
        finally:
            elsewhere.close_all()
