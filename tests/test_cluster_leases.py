"""A node's lease and what it may do without one: a login that arrives before
the node has joined waits for the join; a node frozen past its lease hands
nothing from its inbox to its users; a long Redis pause gets nobody reaped.
"""

from __future__ import annotations

import pytest

from reactor import BACKENDS
from tests.cluster_support import (
    RedisServer,
    cluster_clients,
    node,
    redis_server,  # noqa: F401  (a fixture)
)


def online(name: str) -> str:
    return f"<User {name} is online.>"


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
