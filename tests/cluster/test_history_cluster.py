"""History and offline messages on a cluster: kept in its Redis, so every node reads the same.

Two nodes on a real ``redis-server`` (one per test), registered names in the
same Redis, on every backend pair.  A node writes delivered messages from a
writer thread, so a reader on the other node waits for them with a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from protocol import HistoryLine, WaitingDelivered, WaitingMessage
from reactor.config import HistoryConfig
from tests.cluster_support import (
    PAIR_IDS,
    PAIRS,
    RedisServer,
    nodes,
    redis_server,  # noqa: F401  (a fixture)
)
from tests.history.support import (
    PASSWORD,
    accounts_config,
    alice_and_bob,
    event,
    history,
    log_in,
    register,
)
from tests.support import DEFAULT_TIMEOUT, LineClient

pytestmark = pytest.mark.slow


def eventually(read: Callable[[], list[HistoryLine]],
               holds: Callable[[list[HistoryLine]], bool]) -> list[HistoryLine]:
    """Read again until what is read ``holds`` (another node's write is on its way)."""
    deadline = time.monotonic() + DEFAULT_TIMEOUT
    while not holds(got := read()):
        assert time.monotonic() < deadline, f"history never held; last read {got}"
    return got


def lines(lines: list[HistoryLine]) -> list[tuple[str, str, str, str]]:
    return [(line.id, line.sender, line.to, line.text) for line in lines]


@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
def test_a_message_sent_through_one_node_is_in_the_history_read_on_the_other(
        redis_server: RedisServer, pair: tuple[str, str]) -> None:  # noqa: F811
    url = redis_server.url
    with nodes(pair, url, accounts=accounts_config(url), history=HistoryConfig()) as (a, b), \
            alice_and_bob(a.port, b.port) as (alice, bob):
        alice.send("broadcast hello from A")
        alice.expect("<To everyone> hello from A")
        bob.expect('<Broadcast from Alice: "hello from A">')
        alice.send("chat Bob just for Bob")
        alice.expect("<To Bob> just for Bob")
        bob.expect('<Message from Alice: "just for Bob">')

        def has_all(got: list[HistoryLine]) -> bool:
            return len(got) == 1

        on_b = eventually(lambda: history(bob, "history everyone"), has_all)
        assert [(line.sender, line.text) for line in on_b] == [("Alice", "hello from A")]
        # The same lines, ids included, whichever node reads them.
        assert lines(history(alice, "history everyone")) == lines(on_b)
        # Each party's own copy of their conversation, read on its own node.
        bobs = eventually(lambda: history(bob, "history Alice"), has_all)
        alices = history(alice, "history Bob")
        assert [(m.sender, m.to, m.text) for m in bobs] == [("Alice", "Bob", "just for Bob")]
        assert [(m.sender, m.to, m.text) for m in alices] == [("Alice", "Bob", "just for Bob")]


@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
def test_a_message_left_through_one_node_is_delivered_at_login_on_the_other(
        redis_server: RedisServer, pair: tuple[str, str]) -> None:  # noqa: F811
    url = redis_server.url
    with nodes(pair, url, accounts=accounts_config(url), history=HistoryConfig()) as (a, b):
        register(a.port, "Bob")
        with log_in(a.port, "Alice") as alice:
            alice.send('chat Bob "while you were away"')
            alice.expect("<Message to Bob stored until they log in.>")
            with log_in(b.port, "Bob", PASSWORD) as bob:
                got = event(bob)
                assert isinstance(got, WaitingMessage)
                assert (got.sender, got.text) == ("Alice", "while you were away")
                bob.send("users")  # nothing else waited: the next line is the answer
                bob.expect("<Online users: Alice, Bob>")
                # Alice, on the other node, learns it was delivered.
                alice.expect("<User Bob is online.>")
                assert event(alice) == WaitingDelivered("Bob", got.time)
            # Bob's name is free again once his leaving reached the cluster.
            alice.read_until(lambda line: line == "<User Bob is offline.>")
            with log_in(a.port, "Bob", PASSWORD) as bob:  # delivered once, on whichever node
                bob.send("users")
                bob.expect("<Online users: Alice, Bob>")


def test_the_waiting_cap_holds_for_messages_left_through_two_nodes(
        redis_server: RedisServer) -> None:  # noqa: F811
    url = redis_server.url
    with nodes(("select", "threads"), url, accounts=accounts_config(url),
               history=HistoryConfig(waiting_max=2)) as (a, b):
        register(a.port, "Bob")
        with log_in(a.port, "Alice") as alice, log_in(b.port, "Carol") as carol:
            alice.expect("<User Carol is online.>")
            alice.send("chat Bob one")
            alice.expect("<Message to Bob stored until they log in.>")
            carol.send("chat Bob two")
            carol.expect("<Message to Bob stored until they log in.>")
            alice.send("chat Bob three")
            alice.expect("<Message to Bob not delivered: too many messages wait for Bob.>")
        bob = LineClient(b.port)
        with bob:
            bob.send("Bob")
            bob.expect("<Password required for Bob.>")
            bob.send(f'"{PASSWORD}"')
            bob.expect("<User Bob is online.>")
            assert [event(bob).text for _ in range(2)] == ["one", "two"]  # type: ignore[attr-defined]
