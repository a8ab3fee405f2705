"""Operators across two nodes of a cluster on a real Redis: a kick, a mute
and a ban of a user of the other node, and an unmute announced there (the
rules themselves: tests/accounts/test_moderation.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.accounts.test_accounts import log_in, register, settings
from tests.accounts.test_moderation import login_refused, make_operator, moderation, op_online
from tests.cluster_support import (
    PAIR_IDS,
    PAIRS,
    RedisServer,
    nodes,
    redis_server,  # noqa: F401  (a fixture)
)
from tests.support import wait_until


@pytest.fixture(params=PAIRS, ids=PAIR_IDS)
def two_nodes(redis_server: RedisServer,  # noqa: F811
              request: pytest.FixtureRequest) -> Iterator[tuple[int, int]]:
    """Two nodes of a cluster sharing their accounts, and an operator Op
    registered: the nodes' ports."""
    url = redis_server.url
    with nodes(request.param, url, accounts=settings(url)) as servers:
        first, second = (server.port for server in servers)
        register(first, "Op")
        make_operator(url)
        yield first, second


@pytest.mark.slow
def test_operators_act_on_users_of_every_node(two_nodes: tuple[int, int]) -> None:
    first, second = two_nodes
    with op_online(first) as op:
        # A kick of a user of the other node.
        with log_in(second, "Bob") as bob:
            # Known online on Op's node first: presence crosses over Redis.
            op.read_until(lambda line: line == "<User Bob is online.>")
            assert moderation(op, 'kick Bob "calm down"') == \
                '<Moderation: "Bob kicked (on another server)">'
            bob.read_until(lambda line: line == '<Kicked by Op: "calm down">')
            bob.expect_closed()
        # A mute, then a ban, of a user of the other node.
        with log_in(second, "Carol") as carol:
            op.read_until(lambda line: line == "<User Carol is online.>")
            moderation(op, "mute Carol 1h")
            carol.read_until(lambda line: line.startswith("<Muted by Op for "))
            carol.send('broadcast "hi"')
            carol.expect("<You are muted: your message was not sent.>")
            # (Long enough to outlast the checks below on a busy machine.)
            moderation(op, "ban Carol 90m")
            carol.read_until(lambda line: line.startswith("<Banned by Op for "))
            carol.expect_closed()
        for port in (first, second):
            assert (login_refused(port, "Carol") or "").startswith("<Banned by Op for ")
        # Until it is lifted, on either node.
        assert moderation(op, "unban Carol") == '<Moderation: "Carol unbanned">'
        for port in (first, second):
            assert login_refused(port, "Carol") is None
        # A timed ban ends by itself on either node.
        moderation(op, "ban Dave 2s")
        wait_until(lambda: login_refused(second, "Dave") is None, timeout=15)
        assert login_refused(first, "Dave") is None


@pytest.mark.slow
def test_an_unmute_on_another_node_is_announced_to_the_muted_user(
    two_nodes: tuple[int, int],
) -> None:
    first, second = two_nodes
    with op_online(first) as op, log_in(second, "Carol") as carol:
        op.read_until(lambda line: line == "<User Carol is online.>")
        moderation(op, "mute Carol")
        carol.read_until(lambda line: line == "<Muted by Op.>")
        assert moderation(op, "unmute Carol") == '<Moderation: "Carol unmuted">'
        carol.read_until(lambda line: line == "<Unmuted by Op.>")
        carol.send('broadcast "free again"')
        carol.expect("<To everyone> free again")
