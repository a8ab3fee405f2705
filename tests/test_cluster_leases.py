"""A node's lease and what it may do without one: a login that arrives before
the node has joined waits for the join; a node frozen past its lease hands
nothing from its inbox to its users; a long Redis pause gets nobody reaped.
"""

from __future__ import annotations

import os
import signal

import pytest

from reactor import BACKENDS
from tests.cluster_support import (
    LEASE,
    RedisServer,
    cluster_clients,
    ensure_continued,
    node,
    node_process,
    reap_deadline,
    redis_server,  # noqa: F401  (a fixture)
)


def online(name: str) -> str:
    return f"<User {name} is online.>"


def offline(name: str) -> str:
    return f"<User {name} is offline.>"


# -- a login before the node has joined ---------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_login_that_arrives_before_the_node_joined_waits_for_the_join(
    redis_server: RedisServer, backend: str,  # noqa: F811
) -> None:
    """Redis is paused while the node starts, so that it listens but cannot
    join; Ann's login arrives in that gap.  Redis resumes: the node joins and
    Ann is let in, rather than told the service is unavailable."""
    redis_server.pause()
    try:
        with node(backend, redis_server.url, 3.0, ready=False) as early, \
                cluster_clients([early.port]) as pool:
            ann = pool.connect(0)
            ann.send("Ann")
            redis_server.resume()
            ann.expect(online("Ann"))
            ann.send("users")
            ann.expect("<Online users: Ann>")
    finally:
        if redis_server.paused:
            redis_server.resume()


# -- a node frozen past its lease ------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_frozen_node_does_not_deliver_a_message_its_sender_was_told_was_not_delivered(
    redis_server: RedisServer, backend: str,  # noqa: F811
) -> None:
    """Bob's node is SIGSTOPped; Alice's DM to him reaches its inbox, then
    the node is reaped and Alice is told the message was not delivered.
    SIGCONT: Bob is disconnected and never reads the message."""
    with node("select", redis_server.url) as survivor, \
            node_process(backend, redis_server.url) as frozen, \
            cluster_clients([survivor.port, frozen.port]) as pool:
        alice = pool.login(0, "Alice")
        bob = pool.login(1, "Bob")
        alice.read_until(lambda line: line == online("Bob"))
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            alice.send('chat Bob "while frozen"')
            lines = alice.read_until(lambda line: line == offline("Bob"),
                                     reap_deadline(LEASE) + 2)
            assert "<Message to Bob not delivered: Bob's server stopped.>" in lines, lines
            assert "<To Bob> while frozen" not in lines, lines
        finally:
            ensure_continued(frozen)
        lines = bob.read_until(lambda line: line.startswith("<Disconnected: "))
        assert bob.expect_closed() == b""
        assert not any("while frozen" in line for line in lines), lines
        alice.expect_silence(0.2)
