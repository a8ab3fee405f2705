"""What users see when a node or Redis fails: a node killed, a node frozen past
its lease and woken, Redis paused, Redis restarted empty, Redis not there yet.

The node that fails is a child process (``python -m reactor --cluster``), so
that it can be killed or stopped; the nodes that watch run in this process.
Leases are short (``LEASE``), so a dead node is reaped within about two seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import pytest

from reactor import BACKENDS
from reactor.redis.resp import Batch
from tests.cluster_support import (
    LEASE,
    UNAVAILABLE_PREFIX,
    Client,
    RedisServer,
    cluster_clients,
    ensure_continued,
    eventually_lists,
    freeze,
    login,
    node,
    node_process,
    nodes,
    reap_deadline,
    redis_server,  # noqa: F401  (a fixture)
)
from tests.support import DEFAULT_TIMEOUT, send_a_burst_and_check_it

# Slow: nodes killed and frozen, Redis stalled: leases are waited out.
pytestmark = pytest.mark.slow


def offline(name: str) -> str:
    return f"<User {name} is offline.>"


def online(name: str) -> str:
    return f"<User {name} is online.>"


def false_offline(client: Client, names: Iterable[str]) -> list[str]:
    """Offline notices ``client`` got for any of ``names`` (who never left)."""
    wrong = {offline(name) for name in names}
    return [line for line in client.history if line in wrong]


def read_until_all(client: Client, wanted: Iterable[str], timeout: float) -> list[str]:
    """Lines until every one of ``wanted`` has arrived (in any order)."""
    missing = set(wanted)

    def done(line: str) -> bool:
        missing.discard(line)
        return not missing

    return client.read_until(done, timeout)


def answered(client: Client, *prefixes: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """The first line that starts with one of ``prefixes`` (an answer)."""
    lines = client.read_until(lambda line: line.startswith(prefixes), timeout)
    return lines[-1]


def send_until_echoed(sender: Client, to: str, text: str, timeout: float = DEFAULT_TIMEOUT,
                      ) -> list[str]:
    """Send ``chat to text`` until it is echoed; each try must be answered
    (echo or "not delivered" or "offline"), never silence.  Returns the
    failed answers."""
    deadline = time.monotonic() + timeout
    failures = []
    while True:
        sender.send(f"chat {to} {text}")
        line = answered(sender, f"<To {to}> {text}", f"<Message to {to} not delivered: ",
                        offline(to), f"<User {to} does not exist.>",
                        timeout=max(0.1, deadline - time.monotonic()))
        if line == f"<To {to}> {text}":
            return failures
        failures.append(line)
        if time.monotonic() > deadline:
            raise AssertionError(f"never echoed; answers: {failures}")
        time.sleep(0.05)  # a retry interval, not a synchronisation


# -- a node dies -----------------------------------------------------------------


def _kill_and_watch(redis: RedisServer, backend: str, lease: float, deadline: float) -> None:
    names = ["Vic", "vera", "Val"]
    with node("select", redis.url, lease) as survivor, \
            node_process(backend, redis.url, lease) as victim, \
            cluster_clients([survivor.port, victim.port]) as pool:
        watcher = pool.login(0, "Watcher")
        victims = [pool.login(1, name) for name in names]
        read_until_all(watcher, [online(n) for n in names], DEFAULT_TIMEOUT)
        victim.process.kill()
        killed = time.monotonic()
        lines = read_until_all(watcher, [offline(n) for n in names], deadline + 5)
        took = time.monotonic() - killed
        assert took <= deadline, f"offline notices took {took:.2f} s, more than {deadline:.2f} s"
        for name in names:
            assert lines.count(offline(name)) == 1, lines
        for client in victims:
            client.expect_closed()
        # The names are free: taken again on the survivor, in another case.
        for name in names:
            pool.login(0, name.upper())
            watcher.read_until(lambda line, name=name: line == online(name.upper()))
        watcher.send("users")
        watcher.read_until(lambda line: line == "<Online users: VAL, VERA, VIC, Watcher>")
        watcher.expect_silence(0.2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_killed_nodes_users_go_offline_for_everyone_within_the_deadline_and_are_free_again(
    redis_server: RedisServer, backend: str,  # noqa: F811
) -> None:
    _kill_and_watch(redis_server, backend, LEASE, reap_deadline(LEASE))


def test_with_the_default_lease_a_killed_nodes_users_are_offline_within_5_seconds(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    _kill_and_watch(redis_server, "select", 3.0, 5.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_node_frozen_past_its_lease_is_fenced_when_it_wakes_and_names_stay_unique(
    redis_server: RedisServer, backend: str,  # noqa: F811
) -> None:
    """SIGSTOP a node past its lease: its users are announced offline and
    Vic's name is taken on the other node.  What Vic and Vera type meanwhile
    reaches nobody.  SIGCONT: they are told ``<Disconnected: ...>`` and
    closed; VIC stays the only Vic; the woken node takes new logins."""
    with node("select", redis_server.url) as survivor, \
            node_process(backend, redis_server.url) as frozen, \
            cluster_clients([survivor.port, frozen.port]) as pool:
        watcher = pool.login(0, "Watcher")
        vic = pool.login(1, "Vic")
        vera = pool.login(1, "Vera")
        read_until_all(watcher, [online("Vic"), online("Vera")], DEFAULT_TIMEOUT)
        vic.read_until(lambda line: line == online("Vera"))
        freeze(frozen.pid)
        try:
            read_until_all(watcher, [offline("Vic"), offline("Vera")], reap_deadline(LEASE) + 2)
            thief = pool.login(0, "VIC")
            watcher.read_until(lambda line: line == online("VIC"))
            # Typed while the node is frozen: read by it once it wakes.
            vic.send('chat Vera "while frozen"')
            vic.send('broadcast "frozen"')
            vera.send('chat Watcher "from the frozen"')
        finally:
            ensure_continued(frozen)
        for client in (vic, vera):
            lines = client.read_until(lambda line: line.startswith("<Disconnected: "))
            assert lines[-1] == ("<Disconnected: this server lost contact with the chat,"
                                 " please reconnect.>")
            assert client.expect_closed() == b""
            assert not any(line.startswith(("<To ", '<Message from Vic: "while'))
                           for line in lines), lines
        # Nothing the frozen node's users typed reached the others.
        other = eventually_lists(watcher, ["VIC", "Watcher"])
        assert not any("frozen" in line for line in other), other
        # The woken node joined again: new logins work there; VIC's name stays his.
        newbie = login(frozen.port, "Newbie")
        watcher.read_until(lambda line: line == online("Newbie"))
        claimant = pool.connect(1)
        claimant.send("vic")
        claimant.expect("<Username VIC is already taken.>")
        newbie.send("users")
        newbie.expect("<Online users: Newbie, VIC, Watcher>")
        thief.send("users")
        thief.read_until(lambda line: line == "<Online users: Newbie, VIC, Watcher>")
        newbie.close()


# -- Redis fails ------------------------------------------------------------------


# Every backend stalls on some node, each pairing with a different stall length.
@pytest.mark.parametrize(("pair", "renewals"), [(("select", "threads"), 2),
                                                (("asyncio", "select"), 4)],
                         ids=["select+threads-2-renewals", "asyncio+select-4-renewals"])
def test_a_redis_stall_shorter_than_the_lease_gives_answers_and_no_false_offline_notice(
    redis_server: RedisServer, pair: tuple[str, str], renewals: int,  # noqa: F811
) -> None:
    """Redis is SIGSTOPped for ``renewals`` renewal intervals (less than the
    lease).  A DM, a broadcast and a login made meanwhile are each answered
    -- done late, or refused with a line saying why -- never silence; nobody
    is announced offline; afterwards everything works again."""
    lease = 1.2
    stall = renewals * lease / 6
    with nodes(pair, redis_server.url, lease) as (first, second), \
            cluster_clients([first.port, second.port]) as pool:
        ann = pool.login(0, "Ann")
        bob = pool.login(1, "Bob")
        ann.read_until(lambda line: line == online("Bob"))
        redis_server.pause()
        resume_at = time.monotonic() + stall
        try:
            ann.send('chat Bob "during"')
            bob.send('broadcast "stall"')
            carl = pool.connect(0)
            carl.send("Carl")
            # The stall's length is the fault being tested, not a synchronisation.
            time.sleep(max(0.0, resume_at - time.monotonic()))
        finally:
            redis_server.resume()
        dm = answered(ann, "<To Bob> during", "<Message to Bob not delivered: ")
        assert dm in ("<To Bob> during",
                      "<Message to Bob not delivered: the chat service is unavailable.>"), dm
        bc = answered(bob, "<To everyone> stall", "<Broadcast not sent: ")
        assert bc in ("<To everyone> stall",
                      "<Broadcast not sent: the chat service is unavailable.>"), bc
        first_answer = answered(carl, online("Carl"), UNAVAILABLE_PREFIX)
        if first_answer != online("Carl"):
            assert first_answer == "<Chat service unavailable: try again later.>"
            login(first.port, "Carl", client=carl)
        # Full recovery: DMs both ways, and a new login on the other node.
        send_until_echoed(ann, "Bob", "after")
        send_until_echoed(bob, "Ann", "after")
        dee = pool.login(1, "Dee")
        for client in (ann, bob, carl, dee):
            eventually_lists(client, ["Ann", "Bob", "Carl", "Dee"])
        # Whatever was echoed was delivered; whatever was refused was not.
        assert ('<Message from Ann: "during">' in bob.history) == (dm == "<To Bob> during")
        assert ('<Broadcast from Bob: "stall">' in ann.history) == (bc == "<To everyone> stall")
        assert '<Broadcast from Bob: "stall">' not in bob.history
        for client in (ann, bob, carl, dee):
            assert not false_offline(client, ["Ann", "Bob", "Carl", "Dee"]), client.history


def test_redis_restarted_empty_gets_every_nodes_users_registered_again(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    with nodes(("select", "threads"), redis_server.url) as (first, second), \
            cluster_clients([first.port, second.port]) as pool:
        ann = pool.login(0, "Ann")
        bob = pool.login(1, "Bob")
        ann.read_until(lambda line: line == online("Bob"))
        redis_server.restart_empty()
        # Bob's name is still his: a claim from the other node, once decided, is refused.
        claimant = pool.connect(0)
        deadline = time.monotonic() + DEFAULT_TIMEOUT
        while True:
            claimant.send("BOB")
            line = claimant.read_line()
            if not line.startswith(UNAVAILABLE_PREFIX) or time.monotonic() > deadline:
                break
            time.sleep(0.02)  # a retry interval, not a synchronisation
        assert line == "<Username Bob is already taken.>", line
        # DMs cross again, both ways; a new login is announced on both nodes.
        send_until_echoed(ann, "Bob", "hello again")
        send_until_echoed(bob, "Ann", "hello again")
        carl = pool.login(1, "Carl")
        ann.read_until(lambda line: line == online("Carl"))
        claimant.send("Dee")
        claimant.expect(online("Dee"))
        everyone = ["Ann", "Bob", "Carl", "Dee"]
        for client in (ann, bob, carl, claimant):
            eventually_lists(client, everyone)
        assert '<Message from Ann: "hello again">' in bob.history
        assert '<Message from Bob: "hello again">' in ann.history
        for client in (ann, bob, carl, claimant):
            assert not false_offline(client, everyone), client.history
        # The users list a node gets from Redis (a new node) is the whole chat.
        with node("asyncio", redis_server.url) as third:
            eve = login(third.port, "Eve")
            eventually_lists(eve, [*everyone, "Eve"])
            eve.close()


def test_a_node_without_redis_refuses_logins_with_a_line_and_joins_once_redis_is_there(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    port = redis_server.port
    redis_server.kill()
    with node("select", redis_server.url, ready=False) as lonely, \
            cluster_clients([lonely.port]) as pool:
        ann = pool.connect(0)
        ann.send("Ann")
        assert ann.read_line_bytes() == (
            b"<Chat service unavailable: try again later.>\n")
        ann.send("Ann")  # the connection stays in login: it may try again
        ann.expect("<Chat service unavailable: try again later.>")
        redis_server.start(port)
        login(lonely.port, "Ann", client=ann)
        ann.send("chat Ann me")
        ann.expect("<To Ann> me", '<Message from Ann: "me">')
        # Redis goes away again: a logged-in user stays, told why what needs the chat fails.
        redis_server.kill()
        ann.send('broadcast "anyone?"')
        ann.expect("<Broadcast not sent: the chat service is unavailable.>")
        ann.send("chat Ann me")
        ann.expect("<Message to Ann not delivered: the chat service is unavailable.>")
        ann.send("users")
        ann.expect("<Online users: Ann>")


# -- a bug on the node ---------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bug_handling_one_redis_reply_costs_that_call_alone(
    redis_server: RedisServer, backend: str, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reply handler that raises (planted in the reply to Ann's broadcast)
    is logged; the node goes on serving everyone else, on both nodes."""
    with nodes((backend, backend), redis_server.url) as (first, second), \
            cluster_clients([first.port, second.port]) as pool:
        ann = pool.login(0, "Ann")
        carl = pool.login(0, "Carl")
        bob = pool.login(1, "Bob")
        carl.read_until(lambda line: line == online("Bob"))
        link = first.chat.whiteboard.link  # type: ignore[attr-defined]
        real_call = link.call

        def call(script: str, *params: object) -> None:
            *head, args, on_reply = params
            if script == "broadcast" and b"boom" in args[0]:  # type: ignore[index]
                def on_reply(reply: object) -> None:
                    raise RuntimeError("planted in the reply to Ann's broadcast")
            real_call(script, *head, args, on_reply)

        monkeypatch.setattr(link, "call", call)
        ann.send('broadcast "boom"')
        bob.read_until(lambda line: line == '<Broadcast from Ann: "boom">')  # Redis ran it
        carl.send('broadcast "after"')
        carl.expect("<To everyone> after")
        bob.read_until(lambda line: line == '<Broadcast from Carl: "after">')
        send_until_echoed(carl, "Bob", "still here")
        send_until_echoed(bob, "Carl", "still here")
        assert any("Handling the reply of Redis script broadcast failed" in record.message
                   for record in caplog.records)


# -- Redis forgets the scripts ---------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_calls_that_find_the_scripts_flushed_run_once_each_in_order(
    redis_server: RedisServer, backend: str,  # noqa: F811
) -> None:
    """``SCRIPT FLUSH`` (or a Redis restarted under a connection that
    survived) just before a burst's calls reach Redis: Redis answers NOSCRIPT
    to each, which means it did not run them, so the node loads the scripts
    and sends them again -- and nobody misses, doubles or reorders a line.
    Patient: a call late on a loaded machine (the scripts' loading first)
    is not what this tests."""
    with nodes((backend, backend), redis_server.url, patient=True) as (first, second), \
            cluster_clients([first.port, second.port]) as pool:
        link = first.chat.whiteboard.link  # type: ignore[attr-defined]
        send_batch = link._send_batch
        flushed: list[int] = []

        def flush_first(batch: Batch) -> None:
            broadcasts = sum(call.script == "broadcast" for call in batch.calls)
            if broadcasts and not flushed:
                redis_server.command("SCRIPT", "FLUSH")
                flushed.append(broadcasts)
            send_batch(batch)

        link._send_batch = flush_first
        sender = pool.login(0, "Sender")
        readers = {f"Reader{i}": pool.login(i % 2, f"Reader{i}") for i in range(4)}
        send_a_burst_and_check_it(sender, readers, every_nth_a_message=3)
        assert flushed, "no broadcast went through the link"


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_users_gone_at_once_reach_every_user_once_each_in_order(
    redis_server: RedisServer, backend: str,  # noqa: F811
) -> None:
    """A node's users announced offline together (its death, its leaving)
    go out as a few fan-outs of their notices joined: every user still gets
    each notice once, in order, as one fan-out per name would send them."""
    names = [f"Gone{i}" for i in range(1100)]  # more than two fan-outs' worth
    with nodes([backend], redis_server.url) as (only,), \
            cluster_clients([only.port]) as pool:
        ann = pool.login(0, "Ann")
        bob = pool.login(0, "Bob")
        ann.read_until(lambda line: line == online("Bob"))
        only.call_soon_threadsafe(lambda: only.chat.users_offline(names))
        for client in (ann, bob):
            assert [client.read_line() for _ in names] == [offline(name) for name in names]
            client.send("users")
            client.expect("<Online users: Ann, Bob>")
