"""Browsers in the cluster: a web user on one node and a TCP user on another
chat through Redis as any two users do (each pair of backends, and a mixed
pair).  The nodes are in-process servers with a web port each, pointed at a
fresh ``redis-server``."""

from __future__ import annotations

import pytest

pytest.importorskip("websockets")

from websockets.sync.client import connect

from tests.cluster_support import (
    PAIR_IDS,
    PAIRS,
    RedisServer,
    cluster_clients,
    nodes,
    redis_server,  # noqa: F401  (a fixture)
)
from tests.support import DEFAULT_TIMEOUT


@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
def test_a_web_user_on_one_node_and_a_tcp_user_on_another_chat(
        pair: tuple[str, str], redis_server: RedisServer) -> None:  # noqa: F811
    with nodes(pair, redis_server.url, web_port=0) as (first, second), \
            cluster_clients([first.port, second.port]) as pool:
        bob = pool.login(1, "Bob")
        assert first.web_port is not None
        with connect(f"ws://127.0.0.1:{first.web_port}/ws", open_timeout=DEFAULT_TIMEOUT,
                     compression=None) as alice:
            alice.send("Alice")
            assert alice.recv(timeout=DEFAULT_TIMEOUT) == "<User Alice is online.>"
            bob.expect("<User Alice is online.>")

            alice.send('chat Bob "Hello Bob!"')
            assert alice.recv(timeout=DEFAULT_TIMEOUT) == "<To Bob> Hello Bob!"
            bob.expect('<Message from Alice: "Hello Bob!">')
            bob.send('chat Alice "Hi Alice"')
            bob.expect("<To Alice> Hi Alice")
            assert alice.recv(timeout=DEFAULT_TIMEOUT) == '<Message from Bob: "Hi Alice">'
            bob.send('broadcast "to all"')
            assert alice.recv(timeout=DEFAULT_TIMEOUT) == '<Broadcast from Bob: "to all">'

            alice.send("bye")
            assert alice.recv(timeout=DEFAULT_TIMEOUT) == "<User Alice is offline.>"
        bob.read_until(lambda line: line == "<User Alice is offline.>")
