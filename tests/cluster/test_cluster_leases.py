"""A node's lease and what it may do without one: a login that arrives before
the node has joined waits for the join; a node frozen past its lease hands
nothing from its inbox to its users; a long Redis pause gets nobody reaped.
"""

from __future__ import annotations

import time

import pytest

from reactor import BACKENDS
from reactor.cluster.scripts import PREFIX, SCRIPTS
from tests.cluster.test_cluster_failures import answered, false_offline, send_until_echoed
from tests.cluster_support import (
    RedisServer,
    cluster_clients,
    ensure_continued,
    eventually_lists,
    freeze,
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


FROZEN_TEST_LEASE = 2.0


@pytest.mark.slow  # a node process, frozen for longer than its lease
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_frozen_node_does_not_deliver_a_message_its_sender_was_told_was_not_delivered(
    redis_server: RedisServer, backend: str,  # noqa: F811
) -> None:
    """Bob's node is SIGSTOPped; Alice's DM to him reaches its inbox, then
    the node is reaped and Alice is told the message was not delivered.
    SIGCONT: Bob is disconnected and never reads the message."""
    # A lease long enough that only the SIGSTOP gets a node reaped, not a
    # loaded machine keeping either node from the CPU before it.
    lease = FROZEN_TEST_LEASE
    with node("select", redis_server.url, lease) as survivor, \
            node_process(backend, redis_server.url, lease) as frozen, \
            cluster_clients([survivor.port, frozen.port]) as pool:
        alice = pool.login(0, "Alice")
        bob = pool.login(1, "Bob")
        alice.read_until(lambda line: line == online("Bob"))
        # Frozen before Alice sends: until then the node may still deliver
        # (its lease is good) and answer, and Alice rightly gets her echo.
        freeze(frozen.pid)
        try:
            alice.send('chat Bob "while frozen"')
            lines = alice.read_until(lambda line: line == offline("Bob"),
                                     reap_deadline(lease) + 2)
            assert "<Message to Bob not delivered: Bob's server stopped.>" in lines, lines
            assert "<To Bob> while frozen" not in lines, lines
        finally:
            ensure_continued(frozen)
        lines = bob.read_until(lambda line: line.startswith("<Disconnected: "))
        assert bob.expect_closed() == b""
        assert not any("while frozen" in line for line in lines), lines
        alice.expect_silence(0.2)


# -- a long Redis pause -----------------------------------------------------------------


def _script(redis: RedisServer, script: str, node_id: str, epoch: str,
            *args: object) -> list[object]:
    """Run one of the cluster's scripts as ``node_id`` (no deadline)."""
    reply = redis.command("EVAL", SCRIPTS[script], 1, PREFIX, node_id, epoch, 0,
                                 1000, 1000, *args)
    return [part.decode() if isinstance(part, bytes) else part for part in reply]


def test_after_a_redis_pause_longer_than_the_lease_every_node_gets_a_renewals_chance(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Nodes A and B hold leases; Redis is paused for longer than a lease.
    On resume B renews twice before A renews at all (B's calls were queued
    first): A is not reaped, and its own renewal then succeeds."""
    lease_ms = 300
    epoch = str(_script(redis_server, "register", "A", "", "0", lease_ms, 0)[0])
    _script(redis_server, "register", "B", epoch, "0", lease_ms, 0)
    redis_server.pause()
    try:
        time.sleep(3 * lease_ms / 1000)  # the pause's length is the fault being tested
    finally:
        redis_server.resume()
    for _ in range(2):
        assert _script(redis_server, "renew", "B", epoch, lease_ms)[0] == "OK"
    assert redis_server.command("ZSCORE", f"{PREFIX}nodes", "A") is not None
    assert _script(redis_server, "renew", "A", epoch, lease_ms)[0] == "OK"


@pytest.mark.slow  # a node process, and Redis paused for five leases
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_redis_pause_of_several_leases_gets_nobody_reaped_or_disconnected(
    redis_server: RedisServer, backend: str, caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:
    """Redis is SIGSTOPped for several leases while Alice DMs Bob on the other
    node.  Each DM is answered; on resume nobody is declared dead, announced
    offline or disconnected, and DMs cross both ways again."""
    lease = 1.2
    with node(backend, redis_server.url, lease) as first, \
            node_process(backend, redis_server.url, lease) as second, \
            cluster_clients([first.port, second.port]) as pool:
        alice = pool.login(0, "Alice")
        bob = pool.login(1, "Bob")
        alice.read_until(lambda line: line == online("Bob"))
        redis_server.pause()
        sent = 0
        try:
            # The pause and Alice's pace are the fault being tested, not a
            # synchronisation: a DM every renewal interval, for five leases.
            resume_at = time.monotonic() + 5 * lease
            while time.monotonic() < resume_at:
                alice.send(f'chat Bob "during {sent}"')
                sent += 1
                time.sleep(lease / 6)
        finally:
            redis_server.resume()
        for i in range(sent):
            answered(alice, f"<To Bob> during {i}", "<Message to Bob not delivered: ")
        send_until_echoed(alice, "Bob", "after")
        send_until_echoed(bob, "Alice", "after")
        for client in (alice, bob):
            eventually_lists(client, ["Alice", "Bob"])
            assert not false_offline(client, ["Alice", "Bob"]), client.history
            assert not any(line.startswith("<Disconnected") for line in client.history)
        assert not any("stopped renewing its lease" in record.getMessage()
                       or "declared dead" in record.getMessage() for record in caplog.records)
