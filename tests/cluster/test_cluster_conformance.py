"""The conversation and the commands, with the clients spread over two nodes of
one cluster: byte for byte what one server says.

Each test runs on a pair of nodes of each backend, and on a mixed select +
threads pair.  Node 0 and node 1 are in-process servers pointed at the same
fresh ``redis-server``; what crosses between them goes through Redis only.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterator

import pytest

from reactor import BACKENDS
from reactor.cluster.link import ThreadLink
from reactor.redis.resp import BATCH, Batch
from tests.cluster_support import (
    NO_FLOOD_CONTROL,
    PAIR_IDS,
    PAIRS,
    ClusterClients,
    RedisServer,
    cluster_clients,
    expect_users,
    nodes,
    redis_server,  # noqa: F401  (a fixture)
    redis_tls_server,  # noqa: F401  (a fixture)
)
from tests.faults import Drain, read_all_until_closed
from tests.support import LineClient, send_a_burst_and_check_it, wait_until

KiB = 1024


@pytest.fixture(params=PAIRS, ids=PAIR_IDS)
def pool(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[ClusterClients]:  # noqa: F811
    """Clients of two joined nodes (``pool.login(0 or 1, name)``)."""
    with nodes(request.param, redis_server.url) as (first, second), \
            cluster_clients([first.port, second.port]) as clients:
        yield clients


def test_the_original_conversation_across_two_nodes_byte_for_byte(pool: ClusterClients) -> None:
    alice = pool.login(0, "Alice")
    bob = pool.connect(1)
    bob.send("Bob")
    assert bob.read_line_bytes() == b"<User Bob is online.>\n"
    assert alice.read_line_bytes() == b"<User Bob is online.>\n"

    alice.send('chat Bob "Hello Bob!"')
    assert alice.read_line_bytes() == b"<To Bob> Hello Bob!\n"
    assert bob.read_line_bytes() == b'<Message from Alice: "Hello Bob!">\n'

    bob.send("bye")
    assert bob.read_line_bytes() == b"<User Bob is offline.>\n"
    assert bob.expect_closed() == b""
    assert alice.read_line_bytes() == b"<User Bob is offline.>\n"
    alice.send("users")
    assert alice.read_line_bytes() == b"<Online users: Alice>\n"


def test_online_and_offline_notices_reach_everyone_on_both_nodes(pool: ClusterClients) -> None:
    ann = pool.login(0, "Ann")
    bob = pool.login(1, "Bob")
    ann.expect("<User Bob is online.>")
    cy = pool.login(0, "Cy")
    ann.expect("<User Cy is online.>")
    bob.expect("<User Cy is online.>")
    dee = pool.login(1, "Dee")
    for client in (ann, bob, cy):
        client.expect("<User Dee is online.>")
    # A drop counts as bye, on either node.
    cy.close()
    for client in (ann, bob, dee):
        client.expect("<User Cy is offline.>")
    bob.send("bye")
    bob.expect("<User Bob is offline.>")
    assert bob.expect_closed() == b""
    for client in (ann, dee):
        client.expect("<User Bob is offline.>")
    for client in (ann, dee):
        expect_users(client, "Ann", "Dee")
        client.expect_silence(0.1)


def test_users_lists_the_whole_cluster_sorted_ignoring_case(pool: ClusterClients) -> None:
    zed = pool.login(0, "zed")
    everyone = ["zed"]
    for index, name in enumerate(["Bob", "alice", "Carol", "bea", "Dan"]):
        pool.login((index + 1) % 2, name)
        zed.expect(f"<User {name} is online.>")
        everyone.append(name)
    expect_users(zed, *everyone)
    zed.send("users")
    assert zed.read_line() == "<Online users: alice, bea, Bob, Carol, Dan, zed>"
    # The same list from a user of the other node.
    eve = pool.login(1, "Eve")
    zed.expect("<User Eve is online.>")
    expect_users(eve, *everyone, "Eve")


def test_direct_messages_cross_both_ways_echoed_in_the_registered_spelling(
    pool: ClusterClients,
) -> None:
    alice = pool.login(0, "Alice")
    bob = pool.login(1, "Bob")
    alice.expect("<User Bob is online.>")
    carol = pool.login(1, "Carol")
    for client in (alice, bob):
        client.expect("<User Carol is online.>")
    alice.send("chat cAROL psst")
    alice.expect("<To Carol> psst")
    carol.expect('<Message from Alice: "psst">')
    carol.send('chat ALICE "back at you"')
    carol.expect("<To Alice> back at you")
    alice.expect('<Message from Carol: "back at you">')
    # Quoting and escaping survive the trip through Redis byte for byte.
    alice.send('chat Bob "she said \\"h\u00e9\\" \\\\o/ \\x1b[2J \U0001f980"')
    assert alice.read_line_bytes() == (
        '<To Bob> she said "h\u00e9" \\\\o/ \\x1b[2J \U0001f980\n'.encode())
    assert bob.read_line_bytes() == (
        '<Message from Alice: "she said \\"h\u00e9\\" \\\\o/ \\x1b[2J \U0001f980">\n'.encode())
    # Nobody else heard any of it.
    bob.send("users")
    bob.expect("<Online users: Alice, Bob, Carol>")
    carol.send("users")
    carol.expect("<Online users: Alice, Bob, Carol>")


def test_a_message_to_oneself_and_between_users_of_one_node_still_work(
    pool: ClusterClients,
) -> None:
    alice = pool.login(0, "Alice")
    ann = pool.login(0, "Ann")
    alice.expect("<User Ann is online.>")
    alice.send("chat alice me")
    alice.expect("<To Alice> me", '<Message from Alice: "me">')
    alice.send("chat Ann hi")
    alice.expect("<To Ann> hi")
    ann.expect('<Message from Alice: "hi">')


def test_a_broadcast_reaches_everyone_on_both_nodes_and_the_sender_gets_an_echo(
    pool: ClusterClients,
) -> None:
    alice = pool.login(0, "Alice")
    bob = pool.login(1, "Bob")
    alice.expect("<User Bob is online.>")
    carol = pool.login(1, "Carol")
    dave = pool.login(0, "Dave")
    alice.expect("<User Carol is online.>", "<User Dave is online.>")
    bob.expect("<User Carol is online.>", "<User Dave is online.>")
    carol.expect("<User Dave is online.>")
    alice.send('broadcast "hello all"')
    assert alice.read_line_bytes() == b"<To everyone> hello all\n"
    for client in (bob, carol, dave):
        assert client.read_line_bytes() == b'<Broadcast from Alice: "hello all">\n'
    carol.send('broadcast "and from here"')
    carol.expect("<To everyone> and from here")
    for client in (alice, bob, dave):
        client.expect('<Broadcast from Carol: "and from here">')
    for client in (alice, bob, carol, dave):
        expect_users(client, "Alice", "Bob", "Carol", "Dave")


@pytest.mark.parametrize("every_nth_a_message", [0, 3], ids=["broadcasts", "mixed"])
def test_a_burst_in_one_write_reaches_both_nodes_once_each_in_order(
    pool: ClusterClients, every_nth_a_message: int
) -> None:
    """As on one server (test_commands): the other node gets the burst's
    broadcasts back to back in its inbox and sends them together, and nobody
    on either node misses, doubles or reorders a line."""
    sender = pool.login(0, "Sender")
    readers = {f"Reader{i}": pool.login(1 - i % 2, f"Reader{i}") for i in range(5)}
    send_a_burst_and_check_it(sender, readers, every_nth_a_message)


@pytest.mark.parametrize("backend", BACKENDS)
def test_broadcast_replies_handed_over_together_reach_the_senders_node_once_each_in_order(
    redis_server: RedisServer, backend: str,  # noqa: F811
) -> None:
    """The sender's node fans a broadcast out once Redis has answered it; the
    answers of one pipeline come back in one callback, and their fan-outs are
    queued for one send per recipient (ChatService.together): nothing may
    wait for a later write to go out.  The other node reads a pipeline's
    broadcasts in one inbox batch (MULTI/EXEC), never split."""
    with nodes([backend, backend], redis_server.url) as (first, second), \
            cluster_clients([first.port, second.port]) as pool:
        link = first.chat.whiteboard.link  # type: ignore[attr-defined]
        send_batch, together = link._send_batch, link._together
        pipelines: list[int] = []  # broadcasts per pipeline sent
        together_batches: list[int] = []

        def gated(batch: Batch) -> None:
            broadcasts = sum(call.script == "broadcast" for call in batch.calls)
            if broadcasts and not pipelines and isinstance(link, ThreadLink):
                # Held until the whole burst is queued behind the first (so
                # that the rest come back together) and both nodes' readers
                # wait in XREAD (Redis wakes a blocked reader after the first
                # script of a plain pipeline).  (A loop's link batches what
                # one pass queued: the burst, read in one pass.)
                wait_until(lambda: link._queue.qsize() + broadcasts >= 60
                           and blocked_readers() >= 2,
                           message="the burst queued behind its first broadcast")
            if broadcasts:
                pipelines.append(broadcasts)
            send_batch(batch)

        def blocked_readers() -> int:
            return int(redis_server.command("INFO", "clients")["blocked_clients"])

        def counted(several: bool) -> object:
            if several:
                together_batches.append(1)
            return together(several)

        other = second.chat.whiteboard.link  # type: ignore[attr-defined]
        on_entries = other._on_entries
        reads: list[int] = []  # broadcasts per inbox batch on the other node

        def read(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
            reads.append(sum(fields.get(b"t") == b"bc" for _, fields in entries))
            on_entries(entries)

        link._send_batch, link._together, other._on_entries = gated, counted, read
        sender = pool.login(0, "Sender")
        readers = {f"Reader{i}": pool.login(0 if i < 4 else 1, f"Reader{i}") for i in range(5)}
        send_a_burst_and_check_it(sender, readers, every_nth_a_message=0)
        assert together_batches, "the replies were not handed over together"
        # Every read ends where a pipeline ended (it may hold several).
        ends = set(itertools.accumulate(pipelines))
        assert set(itertools.accumulate(r for r in reads if r)) <= ends, (pipelines, reads)


def test_does_not_exist_and_is_offline_are_decided_cluster_wide(pool: ClusterClients) -> None:
    bob = pool.login(1, "Bob")
    alice = pool.login(0, "Alice")
    bob.expect("<User Alice is online.>")
    alice.send("bye")
    alice.expect("<User Alice is offline.>")
    alice.expect_closed()
    bob.expect("<User Alice is offline.>")
    # Alice was on the other node: still "offline", in her spelling.
    bob.send("chat alice hello")
    bob.expect("<User Alice is offline.>")
    bob.send("chat Nobody hello")
    bob.expect("<User Nobody does not exist.>")
    # A user who joins later on the first node knows Alice's name too.
    cy = pool.login(0, "Cy")
    bob.expect("<User Cy is online.>")
    cy.send("chat ALICE hi")
    cy.expect("<User Alice is offline.>")
    cy.send("chat Nobody hi")
    cy.expect("<User Nobody does not exist.>")


def test_names_are_unique_across_nodes_ignoring_case_and_nobody_is_told(
    pool: ClusterClients,
) -> None:
    alice = pool.login(0, "Alice")
    watcher = pool.login(1, "Watcher")
    alice.expect("<User Watcher is online.>")
    impostor = pool.connect(1)
    impostor.send("aLICE")
    impostor.expect("<Username Alice is already taken.>")
    impostor.send("WATCHER")
    impostor.expect("<Username Watcher is already taken.>")
    impostor.send("Mallory")
    impostor.expect("<User Mallory is online.>")
    for client in (alice, watcher):
        client.expect("<User Mallory is online.>")
    # And the other way: a name held on node 1 is taken on node 0.
    other = pool.connect(0)
    other.send("mallory")
    other.expect("<Username Mallory is already taken.>")
    # Once its holder leaves, the name is free on the other node.
    impostor.send("bye")
    impostor.expect("<User Mallory is offline.>")
    alice.expect("<User Mallory is offline.>")
    watcher.expect("<User Mallory is offline.>")
    other.send("mallory")
    other.expect("<User mallory is online.>")
    for client in (alice, watcher):
        client.expect("<User mallory is online.>")


def test_a_users_online_notice_reaches_a_peer_before_any_message_from_them(
    pool: ClusterClients,
) -> None:
    """Log in and message in one write: the peer on the other node sees the
    online notice, then the message."""
    bob = pool.login(1, "Bob")
    for i in range(10):
        newcomer = pool.connect(0)
        newcomer.send_raw(f'New{i}\nchat Bob "first {i}"\nbroadcast "b{i}"\nbye\n'.encode())
        newcomer.expect(f"<User New{i} is online.>", f"<To Bob> first {i}", f"<To everyone> b{i}",
                        f"<User New{i} is offline.>")
        bob.expect(f"<User New{i} is online.>", f'<Message from New{i}: "first {i}">',
                   f'<Broadcast from New{i}: "b{i}">', f"<User New{i} is offline.>")
        newcomer.close()


def test_lines_after_the_name_wait_for_the_cluster_wide_claim_in_order(
    pool: ClusterClients,
) -> None:
    bob = pool.login(1, "Bob")
    alice = pool.connect(0)
    alice.send_raw(b'bob\nAlice\nchat Bob "one"\nchat Bob "two"\nusers\n')
    alice.expect("<Username Bob is already taken.>", "<User Alice is online.>",
                 "<To Bob> one", "<To Bob> two", "<Online users: Alice, Bob>")
    bob.expect("<User Alice is online.>", '<Message from Alice: "one">',
               '<Message from Alice: "two">')


@pytest.mark.parametrize("pair", [("select", "threads"), ("asyncio", "select")],
                         ids=["select+threads", "asyncio+select"])
def test_an_echo_across_nodes_means_the_recipient_got_the_message(
    redis_server: RedisServer, pair: tuple[str, str],  # noqa: F811
) -> None:
    """Bob (node 1) stops reading; Alice (node 0) pipelines numbered messages
    to him.  Every one is answered: echoed ``<To Bob>`` once Bob's connection
    took it, or "not delivered" (it waited too long and was taken back), or,
    if one was stuck half-sent and Bob was cut off, "offline".  Bob then
    reads to the end: he has exactly the messages Alice saw echoed, in order
    -- never a false echo, never one she was told was not delivered."""
    # Patient, with a long lease: 1,500 pipelined 4 KB messages keep both
    # nodes busy enough that a short lease can lapse between a renewal and its
    # reply, or a Redis call outwait its time-out, and a node then rightly
    # refuses to act ("unavailable"), which is not what this test is about.
    with nodes(pair, redis_server.url, lease=6.0, patient=True, output_limit=64 * KiB,
               output_hard_limit=64 * 1024 * KiB, delivery_timeout=0.5,
               flood=NO_FLOOD_CONTROL) as (first, second), \
            cluster_clients([first.port, second.port]) as pool:
        bob = pool.login(1, "Bob", rcvbuf=4 * KiB)
        alice = pool.login(0, "Alice")
        # (Other presence notices may come first: see the tests above.)
        bob.read_until(lambda line: line == "<User Alice is online.>")
        alice_lines = Drain(alice.sock, keep=lambda line: line.startswith(b"<"))
        total = 1500
        padding = "p" * 3900
        alice.send_raw("".join(f'chat Bob "m{i} {padding}"\n' for i in range(total)).encode())

        def answers() -> tuple[list[bytes], int]:
            kept = alice_lines.kept()
            replies = [line for line in kept
                       if line.startswith((b"<To Bob>", b"<Message to Bob not delivered"))]
            # One "offline" line is the presence notice of a cut; the rest answer messages.
            return replies, max(0, kept.count(b"<User Bob is offline.>") - 1)

        alice_lines.wait_for(lambda d: len(answers()[0]) + answers()[1] == total, timeout=60,
                             message="an answer to every message")
        replies, after_the_cut = answers()
        alice_lines.stop()
        echoed = [int(m) for m in re.findall(rb"<To Bob> m(\d+) ", b"\n".join(replies))]
        refused = [line for line in replies if not line.startswith(b"<To Bob>")]
        assert refused or after_the_cut, "Bob's buffers took everything: no message waited"
        assert set(refused) <= {
            b"<Message to Bob not delivered: Bob is not reading.>",
            b"<Message to Bob not delivered: Bob left before it could be sent.>",
        }
        assert echoed == list(range(len(echoed)))  # in order, none missing in between
        # Bob reads to the end (and leaves, if still there).
        if not after_the_cut:
            bob.send("bye")
        received = read_all_until_closed([bob.sock], timeout=30)[bob.sock]
        got = [int(m) for m in re.findall(rb'<Message from Alice: "m(\d+) p*">\n', received)]
        assert got == echoed


def test_a_mixed_cluster_of_every_backend_is_one_chat(redis_server: RedisServer) -> None:  # noqa: F811
    from reactor import BACKENDS

    with nodes(BACKENDS, redis_server.url) as servers, \
            cluster_clients([s.port for s in servers]) as pool:
        names = [f"U{backend}" for backend in BACKENDS]
        clients: list[LineClient] = []
        for index, name in enumerate(names):
            client = pool.login(index, name)
            for earlier in clients:
                earlier.expect(f"<User {name} is online.>")
            clients.append(client)
        for index, client in enumerate(clients):
            target = names[(index + 1) % len(names)]
            client.send(f"chat {target} ring{index}")
            client.expect(f"<To {target}> ring{index}")
            clients[(index + 1) % len(names)].expect(
                f'<Message from {names[index]}: "ring{index}">')
        for client in clients:
            expect_users(client, *names)


def test_a_login_storm_over_two_nodes_tells_every_pair_exactly_once(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """120 clients log in at once, alternately on two nodes.  As on one
    server, of any two users exactly one hears of the other (the one who was
    online first), and everyone hears of themselves: N(N+1)/2 notices, none
    twice -- also when a node answers a login only after it has applied
    presence changes that Redis made after that login."""
    count = 120
    names = [f"storm{i}" for i in range(count)]
    expected = count * (count + 1) // 2
    # Patient: a claim's deadline in Redis (half the call time-out) can pass
    # while a storm's fan-out keeps a busy 2-core machine behind, and the
    # login is then refused as "unavailable" -- rightly, but not what this
    # test is about.
    with nodes(("select", "threads"), redis_server.url, lease=6.0, patient=True,
               flood=NO_FLOOD_CONTROL) as servers:
        clients = [LineClient(servers[i % 2].port) for i in range(count)]
        drains = [Drain(c.sock, keep=lambda line: line.startswith(b"<")) for c in clients]
        try:
            for client, name in zip(clients, names, strict=True):
                client.send_raw(f"{name}\n".encode())

            def total() -> int:
                return sum(len(d.kept()) for d in drains)

            try:
                wait_until(lambda: total() >= expected, timeout=30)
            except AssertionError:
                kinds = Counter(re.sub(rb"storm\d+", b"X", line)
                                for d in drains for line in d.kept())
                raise AssertionError(f"{total()} of {expected} notices: {kinds}") from None
            heard: list[list[str]] = []
            for drain in drains:
                lines = [line.decode() for line in drain.kept()]
                found = [re.fullmatch(r"<User (storm\d+) is online\.>", line) for line in lines]
                assert all(found), lines
                heard.append([m.group(1) for m in found if m])
            assert total() == expected
            for i in range(count):
                assert len(set(heard[i])) == len(heard[i]), f"{names[i]} heard one twice"
                assert names[i] in heard[i]
                for j in range(i + 1, count):
                    assert (names[j] in heard[i]) != (names[i] in heard[j]), (names[i], names[j])
        finally:
            for drain in drains:
                drain.stop()


@pytest.mark.parametrize("backends", PAIRS, ids=PAIR_IDS)
def test_nodes_that_reach_redis_over_tls_are_one_chat(
    redis_tls_server: RedisServer, backends: tuple[str, str],  # noqa: F811
) -> None:
    """``rediss://``: the link speaks TLS to Redis (redis-py's URL syntax,
    here with the CA to trust), on the loop's own sockets or on threads."""
    with nodes(backends, redis_tls_server.url) as (first, second), \
            cluster_clients([first.port, second.port]) as pool:
        sender = pool.login(0, "Sender")
        readers = {f"Reader{i}": pool.login(i % 2, f"Reader{i}") for i in range(4)}
        send_a_burst_and_check_it(sender, readers, every_nth_a_message=3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_more_calls_at_once_than_one_batch_holds_are_all_answered_in_order(
    redis_server: RedisServer, backend: str,  # noqa: F811
) -> None:
    """Calls queued beyond one batch (BATCH) go out in the batches after it,
    each once the one before it is answered; none is left waiting."""
    count = 2 * BATCH + 100
    with nodes([backend], redis_server.url) as (only,):
        board = only.chat.whiteboard  # type: ignore[attr-defined]
        answers: list[tuple[int, str]] = []

        def call_many() -> None:
            for i in range(count):
                board._call("renew", (3000,),
                            lambda reply, i=i: answers.append((i, board._status(reply))))

        only.call_soon_threadsafe(call_many)
        wait_until(lambda: len(answers) == count, message=f"{count} answers")
        assert answers == [(i, "OK") for i in range(count)]


def test_an_asyncio_node_on_uvloop_carries_the_chat_with_a_select_node(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """The loop link on uvloop: Redis's sockets watched through libuv."""
    pytest.importorskip("uvloop")
    with nodes(("asyncio", "select"), redis_server.url, uvloop=True) as (first, second), \
            cluster_clients([first.port, second.port]) as pool:
        assert type(first.loop).__module__.startswith("uvloop")  # type: ignore[attr-defined]
        sender = pool.login(0, "Sender")
        readers = {f"Reader{i}": pool.login(i % 2, f"Reader{i}") for i in range(4)}
        send_a_burst_and_check_it(sender, readers, every_nth_a_message=3)
