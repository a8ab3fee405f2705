"""The admin endpoint of a cluster node, on a real Redis: ``/readyz`` says
when the node cannot serve the chat (Redis out of reach), and the cluster's
metrics say the same (its calls to Redis fail and are counted); both
recover when Redis is back."""

from __future__ import annotations

import pytest

from tests.accounts.test_accounts import settings
from tests.admin_support import get, scrape
from tests.cluster_support import (
    RedisServer,
    node,
    nodes,
    redis_server,  # noqa: F401  (a fixture)
)
from tests.support import LineClient, wait_until

# Slow: Redis is killed and started again under a node.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("outage", ["killed", "paused"])
def test_readyz_follows_redis_out_of_reach_and_back(
        backend: str, redis_server: RedisServer, outage: str) -> None:  # noqa: F811
    port = redis_server.port
    with node(backend, redis_server.url, admin_port=0,
              accounts=settings(redis_server.url)) as server:
        admin = server.admin_port
        assert admin is not None
        wait_until(lambda: get(admin, "/readyz").status == 200, message="ready once joined")
        joined = scrape(admin)
        assert (joined["reactor_cluster_joined"], joined["reactor_cluster_redis_up"]) == (1, 1)
        assert joined["reactor_cluster_lease_remaining_seconds"] > 0
        lease = server.config.cluster.lease
        assert 0 <= joined["reactor_cluster_lease_age_seconds"] <= lease
        assert joined["reactor_cluster_redis_calls_total"] >= 1  # the registration at least
        assert joined["reactor_cluster_redis_call_errors_total"] == 0
        with LineClient(server.port) as ann:
            ann.send("Ann")
            ann.expect("<User Ann is online.>")
            assert scrape(admin)["reactor_users_online"] == 1

            if outage == "killed":
                redis_server.kill()
            else:
                redis_server.pause()  # SIGSTOP: connected, and no answer

            def unready() -> bool:
                reply = get(admin, "/readyz")
                return reply.status == 503 and reply.text.startswith("not ready: ")

            wait_until(unready, timeout=15, message="not ready without Redis")
            reply = get(admin, "/readyz")
            assert "\n" not in reply.text.rstrip("\n"), "one line"
            assert "Redis" in reply.text or "store" in reply.text, reply.text
            assert get(admin, "/healthz").status == 200  # alive all the same
            assert scrape(admin)["reactor_ready"] == 0
            errors = scrape(admin)["reactor_cluster_redis_call_errors_total"]
            ann.send("bye")  # her name's release is a call to Redis, which fails
            ann.expect_closed()
        wait_until(lambda: scrape(admin)["reactor_cluster_redis_call_errors_total"] > errors,
                   message="the failed call counted")

        if outage == "killed":
            redis_server.start(port)
        else:
            redis_server.resume()
        wait_until(lambda: get(admin, "/readyz").status == 200, timeout=20,
                   message="ready again once Redis is back")
        assert scrape(admin)["reactor_cluster_redis_up"] == 1


def test_a_direct_message_to_another_node_is_timed_until_that_node_answers(
        backend: str, redis_server: RedisServer) -> None:  # noqa: F811
    with nodes([backend, backend], redis_server.url, admin_port=0) as (here, there):
        assert here.admin_port is not None and there.admin_port is not None
        with LineClient(here.port) as ann, LineClient(there.port) as bob:
            ann.send("Ann")
            ann.expect("<User Ann is online.>")
            bob.send("Bob")
            bob.read_until(lambda line: line == "<User Bob is online.>")
            ann.read_until(lambda line: line == "<User Bob is online.>")
            ann.send('chat Bob "across"')
            bob.expect('<Message from Ann: "across">')
            ann.expect("<To Bob> across")
            sent, received = scrape(here.admin_port), scrape(there.admin_port)
    family = "reactor_direct_handoff_seconds"
    assert sent[f"{family}_count"] == sent['reactor_deliveries_total{kind="direct"}'] == 1
    assert sent[f'{family}_bucket{{le="+Inf"}}'] == 1
    assert received[f"{family}_count"] == 0  # timed by the sender's node alone
