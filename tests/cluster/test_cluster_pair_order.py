"""Order between one pair across nodes, under load, on every pair of backends.

Ann on one node, Bob on the other.  Whatever else the two nodes carry
(others flooding DMs and broadcasts across them at the same time), what
Bob receives from Ann comes in the order Ann sent it, DMs and broadcasts
interleaved, each exactly once; and a user's presence brackets their
messages: Bob learns that Carl is online before Carl's first DM, and
that Carl left only after Carl's last one.
"""

from __future__ import annotations

import random
import socket

import pytest

from protocol.events import format_broadcast_from, format_message_from
from tests.cluster_support import (
    NO_FLOOD_CONTROL,
    PAIR_IDS,
    PAIRS,
    RedisServer,
    cluster_clients,
    eventually_lists,
    nodes,
)
from tests.cluster_support import redis_server as redis_server  # a fixture
from tests.faults import Drain

pytestmark = pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)

NOISY = 8  # clients per node that load both nodes meanwhile
NOISE_LINES = 150  # each, half DMs across the nodes, half broadcasts
ANN_LINES = 300
# What a sender is told of each of its direct messages and broadcasts, in
# command order: sent (the echo), or not.
SENDER_TOLD = (b"<To Bob> ", b"<To everyone> ", b"<Message to Bob not delivered",
               b"<Broadcast not sent")


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    received = bytearray()
    while chunk := sock.recv(1 << 16):
        received += chunk
    return bytes(received)


def noise(index: int, names: list[str]) -> bytes:
    """A noisy client's pipelined lines: DMs to the users of the other node
    (odd and even indices alternate nodes), and broadcasts."""
    others = [name for i, name in enumerate(names) if i % 2 != index % 2]
    lines = [f'chat {others[k % len(others)]} "n{k}"' if k % 2 else f'broadcast "n{k}"'
             for k in range(NOISE_LINES)]
    return "".join(line + "\n" for line in lines).encode()


def test_one_senders_dms_and_broadcasts_reach_another_node_in_order_under_load(
    redis_server: RedisServer, pair: tuple[str, str]
) -> None:
    names = [f"noisy{i}" for i in range(2 * NOISY)]
    everyone = ["Ann", "Bob", *names]
    # This is about order, not failure: a long lease, so that a node kept from
    # the CPU by a loaded machine is not declared dead, and patient Redis
    # calls.  A call may still time out under load; its sender is then told
    # the message was not delivered, so the test holds the server to what it
    # told each sender: what it said went arrives, in order, and nothing else.
    with nodes(pair, redis_server.url, 10.0, patient=True, flood=NO_FLOOD_CONTROL) as servers, \
            cluster_clients([s.port for s in servers]) as pool:
        ann = pool.login(0, "Ann")
        bob = pool.login(1, "Bob")
        noisy = [pool.login(i % 2, name) for i, name in enumerate(names)]
        for client in (ann, bob):
            eventually_lists(client, everyone, timeout=30)

        rng = random.Random(20)
        kinds = [rng.choice("db") for _ in range(ANN_LINES)]
        ann_lines = [f'chat Bob "a{k}"' if kind == "d" else f'broadcast "a{k}"'
                     for k, kind in enumerate(kinds)]
        expected = [format_message_from("Ann", f"a{k}") if kind == "d"
                    else format_broadcast_from("Ann", f"a{k}") for k, kind in enumerate(kinds)]

        told_ann = Drain(ann.sock, keep=lambda line: line.startswith(SENDER_TOLD))
        drains = [Drain(client.sock) for client in noisy]
        from_ann_or_carl = Drain(bob.sock, keep=lambda line: line.startswith(
            (b"<Message from Ann:", b"<Broadcast from Ann:", b"<Message from Carl:",
             b"<User Carl is")))
        try:
            for index, client in enumerate(noisy):
                client.send_raw(noise(index, names))
            ann.send_raw("".join(line + "\n" for line in ann_lines).encode())
            # Carl comes, writes twice and leaves, all in one write.
            with socket.create_connection(("127.0.0.1", servers[0].port)) as carl:
                carl.sendall(b'Carl\nchat Bob "c1"\nchat Bob "c2"\nbye\n')
                told_carl = read_until_closed(carl, timeout=60)
            # Every line of Ann's is answered, in command order.
            told_ann.wait_for(lambda d: len(d.kept()) == ANN_LINES, timeout=60,
                              message="an answer to each of Ann's lines")
            sent = [line for line, told in zip(expected, told_ann.kept(), strict=True)
                    if told.startswith(b"<To ")]
            carl_told = [line for line in told_carl.splitlines() if line.startswith(SENDER_TOLD)]
            carl_sent = [b'<Message from Carl: "%s">' % text
                         for text, told in zip((b"c1", b"c2"), carl_told, strict=True)
                         if told.startswith(b"<To ")]
            last = sent[-1].rstrip(b"\n") if sent else None
            from_ann_or_carl.wait_for(
                lambda d: (last is None or last in d.lines)
                and b"<User Carl is offline.>" in d.lines,
                timeout=60, message="Ann's last line sent and Carl's departure")
        finally:
            for drain in (told_ann, *drains, from_ann_or_carl):
                drain.stop()

        kept = from_ann_or_carl.kept()
        from_ann = [line + b"\n" for line in kept if b" from Ann:" in line]
        assert from_ann == sent
        about_carl = [line for line in kept if b"Carl" in line]
        assert about_carl == [b"<User Carl is online.>", *carl_sent, b"<User Carl is offline.>"]
