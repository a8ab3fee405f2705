"""What users see when Redis itself misbehaves under a running cluster:
``FLUSHALL``, ``CLIENT KILL`` of the nodes' connections, a tiny ``maxmemory``
(refusing writes, or evicting keys), on every pair of backends.

The promises, as users and peers observe them:

* nobody is disconnected and nobody is told that someone who never left
  went offline;
* names stay unique: while Ann is online, nobody else gets her name on any
  node;
* nothing is lost or forged: a DM echoed to its sender reached its
  recipient once, and one answered "not delivered" did not arrive;
* every command gets an answer meanwhile (a refusal, never silence), and
  once Redis works again DMs cross both ways and new logins are seen by all;
* the log says what happened in a line per episode, not a line per retry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import pytest

from tests.cluster_support import (
    PAIR_IDS,
    PAIRS,
    UNAVAILABLE_PREFIX,
    Client,
    ClusterClients,
    RedisServer,
    cluster_clients,
    eventually_lists,
    nodes,
)
from tests.cluster_support import redis_server as redis_server  # a fixture
from tests.support import DEFAULT_TIMEOUT, wait_until

pytestmark = pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)

NOT_DELIVERED = "<Message to Bob not delivered: "
UNAVAILABLE_DM = "<Message to Bob not delivered: the chat service is unavailable.>"


def offline(name: str) -> str:
    return f"<User {name} is offline.>"


def answer_to_dm(ann: Client, text: str) -> str:
    ann.send(f'chat Bob "{text}"')
    return ann.read_until(lambda line: line.startswith((f"<To Bob> {text}", NOT_DELIVERED,
                                                        offline("Bob"))))[-1]


def dm_until_echoed(ann: Client, tag: str, sent: list[str],
                    timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """Ann DMs Bob until one is echoed; returns the refusals.  ``sent``
    collects the texts that were echoed (those Bob must get)."""
    deadline = time.monotonic() + timeout
    refusals: list[str] = []
    for attempt in range(10_000):
        text = f"{tag}-{attempt}"
        line = answer_to_dm(ann, text)
        if line == f"<To Bob> {text}":
            sent.append(text)
            return refusals
        refusals.append(line)
        assert time.monotonic() < deadline, f"never echoed; answers: {refusals}"
        time.sleep(0.02)  # a retry interval, not a synchronisation
    raise AssertionError("unreachable")


def claim_until_decided(pool: ClusterClients, node_index: int, name: str) -> str:
    """Try to log in as ``name`` until the answer is not "unavailable"."""
    claimant = pool.connect(node_index)
    deadline = time.monotonic() + DEFAULT_TIMEOUT
    while True:
        claimant.send(name)
        line = claimant.read_line()
        if not line.startswith(UNAVAILABLE_PREFIX) or time.monotonic() > deadline:
            claimant.close()
            return line
        time.sleep(0.02)  # a retry interval, not a synchronisation


class Chat:
    """Ann on the first node, Bob on the second, and what each was told."""

    def __init__(self, pool: ClusterClients) -> None:
        self.pool = pool
        self.ann = pool.login(0, "Ann")
        self.bob = pool.login(1, "Bob")
        self.ann.read_until(lambda line: line == "<User Bob is online.>")
        self.sent: list[str] = []  # DMs Ann was told reached Bob

    def everything_works_again(self) -> None:
        """DMs cross both ways, Ann's name is hers, a newcomer is seen by all;
        then nothing lost, nothing forged, nobody falsely offline."""
        dm_until_echoed(self.ann, "after", self.sent)
        self.bob.send('chat Ann "back"')
        self.bob.read_until(lambda line: line.startswith(("<To Ann> back", "<Message to Ann")))
        assert claim_until_decided(self.pool, 1, "ANN") == "<Username Ann is already taken.>"
        carl = self.pool.login(1, "Carl")
        for client in (self.ann, self.bob, carl):
            eventually_lists(client, ["Ann", "Bob", "Carl"])
        # Every DM echoed to Ann reached Bob once, in order; no other did.
        self.ann.send('chat Bob "last"')
        self.ann.read_until(lambda line: line == "<To Bob> last")
        self.bob.read_until(lambda line: line == '<Message from Ann: "last">')
        got = [line[len('<Message from Ann: "'):-2] for line in self.bob.history
               if line.startswith("<Message from Ann: ")]
        assert got == [*self.sent, "last"]
        for client, other in ((self.ann, "Bob"), (self.bob, "Ann")):
            assert offline(other) not in client.history, client.history
            assert not client.closed_by_server


@pytest.fixture
def chat_on(redis_server: RedisServer, pair: tuple[str, str]) -> Iterator[Chat]:
    with nodes(pair, redis_server.url) as (first, second), \
            cluster_clients([first.port, second.port]) as pool:
        yield Chat(pool)


def reactor_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("reactor") and text in r.getMessage()]


# -- FLUSHALL and CLIENT KILL -----------------------------------------------------------


def test_flushall_is_survived_like_redis_restarted_empty(
    redis_server: RedisServer, chat_on: Chat, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reactor")
    dm_until_echoed(chat_on.ann, "before", chat_on.sent)
    redis_server.flush()
    chat_on.everything_works_again()
    assert len(reactor_lines(caplog, "Redis lost the chat's state")) == 2  # once per node


def test_killed_redis_connections_are_made_again_and_nobody_notices_but_a_refusal(
    redis_server: RedisServer, chat_on: Chat, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reactor")
    killed = redis_server.command("CLIENT", "KILL", "TYPE", "normal")
    assert killed >= 2  # at least one connection per node
    for attempt in range(3):  # each answered at once: delivered, or refused honestly
        line = answer_to_dm(chat_on.ann, f"during-{attempt}")
        if line.startswith("<To Bob> "):
            chat_on.sent.append(f"during-{attempt}")
        else:
            assert line == UNAVAILABLE_DM
    chat_on.everything_works_again()
    assert len(reactor_lines(caplog, "Lost Redis at")) == 2  # once per node
    assert len(reactor_lines(caplog, "is reachable again")) == 2


# -- a tiny maxmemory -------------------------------------------------------------------------


def script_calls(redis_server: RedisServer) -> int:
    """How many script calls Redis has run: the nodes' renewals, a clock
    that needs no sleeping."""
    stats = redis_server.command("INFO", "commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def refused_for_memory(redis_server: RedisServer) -> int:
    """How many commands Redis has refused with OOM."""
    stats = redis_server.command("INFO", "errorstats")
    return int(stats.get("errorstat_OOM", {}).get("count", 0))


def out_of_memory(redis_server: RedisServer, policy: str) -> Callable[[], None]:
    """Set a one-byte maxmemory under ``policy``; returns the repair."""
    redis_server.command("CONFIG", "SET", "maxmemory-policy", policy)
    redis_server.command("CONFIG", "SET", "maxmemory", "1")
    return lambda: redis_server.command("CONFIG", "SET", "maxmemory", "0")


@pytest.mark.parametrize("policy", ["noeviction", "allkeys-lru"])
def test_redis_out_of_memory_refuses_what_needs_it_and_keeps_everyone(
    redis_server: RedisServer, chat_on: Chat, policy: str
) -> None:
    dm_until_echoed(chat_on.ann, "before", chat_on.sent)
    repair = out_of_memory(redis_server, policy)
    # Refused, every time, with a line: the DM, a new login, a broadcast.
    wait_until(lambda: answer_to_dm(chat_on.ann, "oom") == UNAVAILABLE_DM,
               message="a DM refused for want of memory")
    newcomer = chat_on.pool.connect(1)
    newcomer.send("Dave")
    assert newcomer.read_line().startswith(UNAVAILABLE_PREFIX)
    chat_on.bob.send('broadcast "anyone?"')
    chat_on.bob.read_until(lambda line: line == "<Broadcast not sent: the chat service is "
                                                "unavailable.>")
    # Past several leases of refused renewals, nobody is declared dead.
    wait_until(lambda: refused_for_memory(redis_server) >= 20,
               message="renewals refused for a while")
    repair()
    chat_on.everything_works_again()


def test_redis_refusing_writes_is_one_log_line_per_node_not_one_per_renewal(
    redis_server: RedisServer, chat_on: Chat, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reactor")
    repair = out_of_memory(redis_server, "noeviction")
    wait_until(lambda: refused_for_memory(redis_server) >= 20,
               message="renewals refused for a while")
    repair()
    chat_on.everything_works_again()
    assert len(reactor_lines(caplog, "OOM")) <= 2, reactor_lines(caplog, "OOM")


def test_a_chat_key_evicted_alone_is_noticed_and_names_stay_unique(
    redis_server: RedisServer, chat_on: Chat
) -> None:
    redis_server.command("DEL", "{chat}:users")
    # Over many renewals, nobody else ever gets Ann's name.
    until = script_calls(redis_server) + 60
    while script_calls(redis_server) < until:
        claimant = chat_on.pool.connect(1)
        claimant.send("ann")
        line = claimant.read_line()
        claimant.close()
        assert line in ("<Username Ann is already taken.>",
                        "<Chat service unavailable: try again later.>"), line
        time.sleep(0.05)  # a retry interval, not a synchronisation
    chat_on.everything_works_again()


def test_the_lease_set_evicted_alone_fences_nobody(
    redis_server: RedisServer, chat_on: Chat, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reactor")
    redis_server.command("DEL", "{chat}:nodes")
    chat_on.everything_works_again()
    assert len(reactor_lines(caplog, "Redis lost the chat's state")) == 2  # once per node
    assert not reactor_lines(caplog, "declared dead")


def policy_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return reactor_lines(caplog, "maxmemory-policy")


def test_a_redis_that_may_evict_keys_is_warned_of_once_per_node(
    redis_server: RedisServer, pair: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reactor")
    redis_server.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    with nodes(pair, redis_server.url):
        pass
    warnings = policy_warnings(caplog)
    assert len(warnings) == 2 and all("allkeys-lru" in line for line in warnings), warnings


def test_noeviction_or_a_refused_config_get_is_not_warned_of(
    redis_server: RedisServer, pair: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reactor")
    with nodes(pair, redis_server.url):
        pass
    # A Redis user that may not use CONFIG (as on managed services).
    redis_server.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    redis_server.command("ACL", "SETUSER", "chat", "on", ">secret", "~*", "&*", "+@all",
                         "-config")
    with nodes(pair, redis_server.url.replace("redis://", "redis://chat:secret@")):
        pass
    assert not policy_warnings(caplog)


def test_after_flushall_a_refused_dm_never_says_its_recipient_left(
    redis_server: RedisServer, chat_on: Chat
) -> None:
    redis_server.flush()
    refusals = dm_until_echoed(chat_on.ann, "after", chat_on.sent)
    assert all(line == UNAVAILABLE_DM for line in refusals), refusals


def test_the_chat_state_lost_again_and_again_under_a_stream_of_dms_repeats_none(
    redis_server: RedisServer, chat_on: Chat
) -> None:
    """Each time the epoch goes, both nodes register again and read their inbox
    again from a new hello entry, while Ann's DMs keep arriving there: a read
    that got past the hello before the registration's answer must not hand
    Bob a message a second time."""
    for episode in range(8):
        texts = [f"e{episode}-{index}" for index in range(40)]
        chat_on.ann.send_raw("".join(f'chat Bob "{text}"\n' for text in texts[:20]).encode())
        redis_server.command("DEL", "{chat}:epoch")
        chat_on.ann.send_raw("".join(f'chat Bob "{text}"\n' for text in texts[20:]).encode())
        answers = [chat_on.ann.read_until(lambda line: line.startswith(("<To Bob> ",
                                                                         NOT_DELIVERED)))[-1]
                   for _ in texts]
        chat_on.sent += [text for text in texts if f"<To Bob> {text}" in answers]
    chat_on.everything_works_again()
