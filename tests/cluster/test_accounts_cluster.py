"""Registered names in a cluster: the accounts live in the cluster's Redis, so
that a name registered through one node is owned on every node.

Real ``redis-server`` processes (one per test), nodes on every backend pair,
and the failure that matters most for owned names: a Redis that restarts
empty must not hand every registered name to whoever types it first.
"""

from __future__ import annotations

import pytest

from reactor import BACKENDS
from reactor.accounts.service import UNAVAILABLE
from tests.accounts.test_accounts import (
    FAST_HASH,
    OTHER,
    PASSWORD,
    Records,
    log_in,
    operator,
    records,  # noqa: F401  (a fixture)
    register,
    settings,
)
from tests.accounts.test_accounts_load import (
    OWNER,
    Guesses,
    RecordingHasher,
    Timeline,
    accounts_of,
    assert_one_check_per_window,
    guess_in_parallel,
    three_back_offs,
    timeline,  # noqa: F401  (a fixture)
)
from tests.cluster_support import (
    LEASE,
    PAIR_IDS,
    PAIRS,
    RedisServer,
    eventually_lists,
    login,
    node,
    node_process,
    nodes,
    redis_server,  # noqa: F401  (a fixture)
    wait_ready,
)
from tests.support import DEFAULT_TIMEOUT, LineClient, wait_until

# Slow: nodes on a real Redis, and back-offs that are waited out.
pytestmark = pytest.mark.slow

REFUSED = f"<Invalid username: {UNAVAILABLE}.>"


@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
def test_a_name_registered_through_one_node_is_owned_on_every_node(
    redis_server: RedisServer, pair: tuple[str, str],  # noqa: F811
) -> None:
    with nodes(pair, redis_server.url, accounts=settings(redis_server.url)) as servers:
        first, second = (server.port for server in servers)
        register(first, "Alice")
        with LineClient(second) as client:
            client.send("ALICE")  # any case: asked under the registered spelling
            client.expect("<Password required for Alice.>")
            client.send('"not the password"')
            client.expect("<Wrong password for Alice.>")
            client.send(f'"{PASSWORD}"')
            client.expect("<User Alice is online.>")
            client.send(f'password "{PASSWORD}" "{OTHER}"')
            client.expect("<Password changed for Alice.>")
            client.send("bye")
            client.expect("<User Alice is offline.>")
        # The first node checks the password the second one changed.
        with LineClient(first) as client:
            client.send("Alice")
            client.expect("<Password required for Alice.>")
            client.send(f'"{PASSWORD}"')
            client.expect("<Wrong password for Alice.>")
            client.send(f'"{OTHER}"')
            client.expect("<User Alice is online.>")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_redis_that_lost_the_accounts_refuses_every_login_rather_than_open_the_names(
    redis_server: RedisServer, records: Records, backend: str,  # noqa: F811
) -> None:
    url = redis_server.url
    with node(backend, url, accounts=settings(url)) as server:
        register(server.port, "Alice")
        redis_server.restart_empty()  # no persistence: every key is gone

        def refused_as_lost() -> bool:
            # The first call may only meet the closed connection; a later one
            # reaches the empty Redis and finds the accounts' marker gone.
            with LineClient(server.port) as client:
                client.send("Alice")
                assert client.read_line() == REFUSED  # never a password prompt, never online
            return any("gone from Redis" in line for line in records.snapshot())

        wait_until(refused_as_lost, DEFAULT_TIMEOUT, "a login refused for the lost accounts")
        with LineClient(server.port) as client:
            client.send("Bob")  # any name: who owned what is not known any more
            client.expect(REFUSED)

        # The operator opens the store again: it says so, and the names are open.
        listed = operator(url, "list")
        assert listed.returncode == 0
        assert "none kept before (new, or Redis lost them)" in listed.stderr
        login(server.port, "Alice").close()  # (once the node has registered again)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_paused_redis_is_a_clear_answer_and_then_the_names_are_owned_again(
    redis_server: RedisServer, backend: str,  # noqa: F811
) -> None:
    url = redis_server.url
    # A lease longer than the store's 2 s timeout: the pause is not a node death.
    with node(backend, url, lease=3.0, accounts=settings(url)) as server:
        register(server.port, "Alice")
        redis_server.pause()
        try:
            with LineClient(server.port) as client:
                client.send("Alice")
                client.expect(REFUSED, timeout=10)
        finally:
            redis_server.resume()
        wait_ready(server.port)  # the node is back in the cluster
        with LineClient(server.port) as client:
            client.send("Alice")
            client.expect("<Password required for Alice.>")
            client.send(f'"{PASSWORD}"')
            client.expect("<User Alice is online.>")


def test_nodes_started_with_accounts_share_them_across_restarts_and_warn_of_no_persistence(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    args = ("--accounts", "--password-hash", FAST_HASH, "--password-backoff", "0")
    with node_process("select", redis_server.url, LEASE, *args, log_level="INFO") as first:
        first.wait_for_log(lambda line: "keeps nothing on disk" in line)
        register(first.port, "Alice")
        with node_process("threads", redis_server.url, LEASE, *args) as second, \
                log_in(second.port, "Alice", PASSWORD) as alice:
            eventually_lists(alice, ["Alice"])
        assert first.terminate() == 0
    with node_process("select", redis_server.url, LEASE, *args) as again:
        log_in(again.port, "Alice", PASSWORD).close()


@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
def test_the_password_back_off_is_shared_by_the_nodes(
    redis_server: RedisServer, records: Records, pair: tuple[str, str],  # noqa: F811
) -> None:
    url = redis_server.url
    with nodes(pair, url, accounts=settings(url, backoff_first=3.0,
                                                            backoff_max=60.0)) as servers:
        first, second = (server.port for server in servers)
        register(first, "Alice")
        with LineClient(first) as guesser:
            guesser.send("Alice")
            guesser.expect("<Password required for Alice.>")
            guesser.send('"a wrong guess"')
            guesser.expect("<Wrong password for Alice.>")
        # The other node knows of that failure: its password check waits too.
        with LineClient(second) as client:
            client.send("Alice")
            client.expect("<Password required for Alice.>")
            client.send(f'"{PASSWORD}"')
            client.expect_silence(1.0)  # backing off (3 s): not answered yet
            client.expect("<User Alice is online.>", timeout=10)
        assert any("Login failures for Alice from 127.0.0.1: backing off 3 s" in line
                   for line in records.snapshot())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_name_given_up_on_another_node_is_not_refused_from_a_lagging_view(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, backend: str,  # noqa: F811
) -> None:
    """Alice leaves on one node and logs in at once on the other, whose
    mirror of the cluster has not yet heard of her leaving (its inbox is
    held here): she is asked for her password, not told her name is taken."""
    url = redis_server.url
    with nodes((backend, backend), url, accounts=settings(url)) as (first, second):
        register(first.port, "Alice")
        alice = log_in(second.port, "Alice", PASSWORD)
        board = first.chat.whiteboard  # type: ignore[attr-defined]
        wait_until(lambda: board.lookup("Alice") is not None, message="the first node's mirror")
        link = board.link
        apply_entries = link._on_entries
        held: list[object] = []
        monkeypatch.setattr(link, "_on_entries", held.append)  # (on the chat thread)
        alice.send("bye")
        alice.expect("<User Alice is offline.>")  # given up in Redis
        alice.close()
        with LineClient(first.port) as again:
            again.send("Alice")
            again.expect("<Password required for Alice.>")
            assert board.lookup("Alice") is not None  # the view still lagged

            def catch_up() -> None:
                link._on_entries = apply_entries
                for batch in held:
                    apply_entries(batch)

            first.call_soon_threadsafe(catch_up)
            again.send(f'"{PASSWORD}"')
            again.expect("<User Alice is online.>")


BACKOFF_MAX = 60.0


@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
def test_parallel_guesses_spread_over_the_nodes_are_checked_one_per_back_off_window(
    redis_server: RedisServer, timeline: Timeline, pair: tuple[str, str],  # noqa: F811
) -> None:
    url = redis_server.url
    with nodes(pair, url, accounts=settings(url, backoff_first=0.25,
                                            backoff_max=BACKOFF_MAX)) as servers:
        ports = [server.port for server in servers]
        register(ports[0], "Alice")
        hasher = RecordingHasher(timeline)
        for server in servers:
            accounts_of(server).hasher = hasher  # one record of the checks of both
        guessers = guess_in_parallel(ports, 8)
        try:
            wait_until(three_back_offs(timeline), message="three back-offs, by either node")
            assert_one_check_per_window(Guesses(timeline.snapshot()))
        finally:
            for client in guessers:
                client.close()
        # The owner, on the other node and after the back-off, logs in.
        with LineClient(ports[1], source=OWNER) as owner:
            owner.send("Alice")
            owner.expect("<Password required for Alice.>")
            owner.send(f'"{PASSWORD}"')
            # Checked once the back-off ends, which the guesses still in
            # flight when the guessers left may have lengthened (up to its
            # maximum) on a loaded machine.
            owner.expect("<User Alice is online.>", timeout=BACKOFF_MAX + DEFAULT_TIMEOUT)
        assert_one_check_per_window(Guesses(timeline.snapshot()))
