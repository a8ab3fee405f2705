"""Races, on both backends (the threads backend above all): one name claimed
twice at the same instant, a name freed and retaken at once, a user leaving
while messages to them are in flight, and order between one sender and one
recipient while everybody talks at once.
"""

from __future__ import annotations

import random
import re
import socket
import subprocess
import sys
import threading
from collections import defaultdict

import pytest

from reactor.backends.base import Server
from reactor.flow import FloodLimits
from reactor.outbuf import Entry
from tests.faults import Drain, reset
from tests.support import DEFAULT_TIMEOUT, Clients, LineClient, running_server

TRIES = 300


def test_two_clients_claiming_one_name_at_once_exactly_one_wins(server: Server,
                                                                  clients: Clients) -> None:
    """Hundreds of times, two connections send the same name (in different
    case) at the same instant; exactly one is online, the other is told."""
    gate = threading.Barrier(2)
    outcomes: list[list[str]] = [[], []]

    def claimant(side: int) -> None:
        for attempt in range(TRIES):
            with LineClient(server.port) as client:
                name = f"name{attempt}" if side == 0 else f"NAME{attempt}"
                gate.wait(timeout=DEFAULT_TIMEOUT)
                client.send(name)
                outcomes[side].append(client.read_line())
                gate.wait(timeout=DEFAULT_TIMEOUT)  # both have their answer: close

    threads = [threading.Thread(target=claimant, args=(side,)) for side in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    assert len(outcomes[0]) == len(outcomes[1]) == TRIES
    for attempt, lines in enumerate(zip(*outcomes, strict=True)):
        won = [line for line in lines if re.fullmatch(rf"<User name{attempt} is online\.>", line,
                                                     re.IGNORECASE)]
        taken = [line for line in lines if re.fullmatch(
            rf"<Username name{attempt} is already taken\.>", line, re.IGNORECASE)]
        assert len(won) == 1 and len(taken) == 1, (attempt, lines)


KILLABLE_CLIENT = """
import socket, sys
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sock.sendall(b"Phoenix\\n")
assert sock.recv(100) == b"<User Phoenix is online.>\\n"
print("ready", flush=True)
sys.stdin.read()
"""


def _leave(way: str, phoenix: LineClient | subprocess.Popen[str]) -> None:
    if isinstance(phoenix, subprocess.Popen):
        phoenix.kill()  # kill -9
        phoenix.wait(DEFAULT_TIMEOUT)
        return
    if way == "bye":
        phoenix.send("bye")
        phoenix.expect("<User Phoenix is offline.>")  # the name is free from here on
    elif way == "reset":
        reset(phoenix.sock)
    elif way == "close":
        phoenix.close()
    elif way == "half-close":
        phoenix.sock.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize("way, rounds", [("bye", 40), ("reset", 40), ("close", 40),
                                         ("half-close", 40), ("kill -9", 4)])
def test_a_name_freed_any_way_is_taken_again_at_once_with_one_notice_each(
    server: Server, clients: Clients, way: str, rounds: int,
) -> None:
    online, offline = "<User Phoenix is online.>", "<User Phoenix is offline.>"
    watchers = [clients.login("W1"), clients.login("W2")]
    watchers[0].expect("<User W2 is online.>")
    children: list[subprocess.Popen[str]] = []

    def join() -> LineClient | subprocess.Popen[str]:
        if way != "kill -9":
            client = clients.connect()
            client.send("Phoenix")
            client.expect(online)  # at the first try
            return client
        child = subprocess.Popen([sys.executable, "-c", KILLABLE_CLIENT, str(server.port)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        children.append(child)
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        return child

    try:
        phoenix = join()
        for watcher in watchers:
            watcher.expect(online)
        for _ in range(rounds):
            _leave(way, phoenix)
            told = []
            if way != "bye":  # after a drop, the name is free once the others are told
                watchers[0].expect(offline)
                told.append(watchers[0])
            phoenix = join()
            for watcher in watchers:
                if watcher not in told:
                    watcher.expect(offline)
                watcher.expect(online)
        # One notice each time, no more: nothing else is pending for the watchers.
        for watcher in watchers:
            watcher.send("users")
            watcher.expect("<Online users: Phoenix, W1, W2>")
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.communicate()


@pytest.mark.parametrize("way", ["bye", "half-close"])
def test_a_user_leaving_while_messages_are_in_flight_loses_none(backend: str, way: str) -> None:
    """Alice keeps sending numbered messages to Bob; Bob leaves in the middle.
    Every message Alice was told went to Bob (``<To Bob> ...``) reached Bob, in
    order, before Bob's connection ended; every other one was answered
    ``<User Bob is offline.>`` or ``<Message to Bob not delivered: ...>``.
    (Flood control is off: Alice pours as fast as she can, on purpose.)"""
    with running_server(backend, flood=FloodLimits(enabled=False)) as server:
        clients = Clients(server.port)
        try:
            _leave_in_the_middle(clients, way)
        finally:
            clients.close_all()


def _leave_in_the_middle(clients: Clients, way: str) -> None:
    alice = clients.login("Alice")
    answers = Drain(alice.sock, keep=lambda line: True)
    # How long Bob's exit takes, counted in Alice's messages answered
    # meanwhile, so that a loaded machine slows both sides alike.
    most_answered_during_exit = 0
    try:
        for round_ in range(5):
            before = len(answers.kept())
            bob = clients.login("Bob")
            answers.wait_for(lambda d, n=before: len(d.kept()) > n, message="Bob online")
            assert answers.kept()[before] == b"<User Bob is online.>"
            sent_lines = 0
            stop = threading.Event()

            def pour_chunk(round_: int = round_) -> None:
                nonlocal sent_lines
                chunk = [f'chat Bob "r{round_}m{sent_lines + i}"\n' for i in range(10)]
                alice.sock.sendall("".join(chunk).encode())
                sent_lines += 10

            def pour(stop: threading.Event = stop, before: int = before) -> None:
                # At most ~2,000 lines unanswered: enough to keep messages in
                # flight whenever Bob leaves, and a backlog the server works
                # off in well under the deadline even on a loaded machine
                # (unbounded, the socket buffers held ~400,000 lines).
                while not stop.is_set():
                    # (B023: the thread runs and ends within this iteration of the loop)
                    if sent_lines - (len(answers.kept()) - before) > 2000:  # noqa: B023
                        stop.wait(0.001)
                        continue
                    pour_chunk()

            pourer = threading.Thread(target=pour)
            pourer.start()
            bob.expect(f'<Message from Alice: "r{round_}m0">')
            answered_before_exit = len(answers.kept())
            if way == "bye":
                bob.send("bye")
            else:
                bob.sock.shutdown(socket.SHUT_WR)
            rest = bob.expect_closed()
            # Bob's last word waits its turn, not for Alice's flood to end.
            most_answered_during_exit = max(most_answered_during_exit,
                                            len(answers.kept()) - answered_before_exit)
            stop.set()
            pourer.join(timeout=30)
            pour_chunk()  # Bob is gone: at least these are answered "offline"
            count = sent_lines
            received = [0, *map(int, re.findall(rb'<Message from Alice: "r\d+m(\d+)">', rest))]
            # One answer per message, plus the notice that Bob left.
            answers.wait_for(lambda d, n=before + 1 + count + 1: len(d.kept()) >= n,
                             message="Alice's answers")
            mine = answers.kept()[before + 1 :]
            sent = [int(m) for m in re.findall(rb"<To Bob> r\d+m(\d+)", b"\n".join(mine))]
            told_offline = mine.count(b"<User Bob is offline.>") + sum(
                line.startswith(b"<Message to Bob not delivered: ") for line in mine)
            assert received == sent == list(range(len(sent)))
            assert len(sent) + told_offline == count + 1, (len(sent), told_offline)
            assert len(sent) < count, "Bob did not leave in the middle; no race was run"
            bob.close()
    finally:
        answers.stop()
    # At most ~2,000 of Alice's messages wait for an answer at any time, and a
    # pass reads some hundreds more: Bob's exit takes the backlog and a few passes.
    assert most_answered_during_exit < 10_000, (
        f"{most_answered_during_exit} of Alice's messages answered while Bob left")


def test_threads_withdraw_takes_the_send_lock() -> None:
    """The threads backend's writer thread reads and consumes the output
    queue under the transport's send lock (its sendmsg releases the GIL);
    withdraw() -- the delivery timeout, on the timer thread -- must take it
    too, or a message could be sent and still reported "not delivered",
    and consume() would then pop the wrong entries."""
    with running_server("threads") as server, LineClient(server.port) as client:
        client.send("Alice")
        client.expect("<User Alice is online.>")
        transport = next(iter(server.chat.connections)).transport
        lock = transport._send_lock  # type: ignore[attr-defined]
        entry = Entry(b"x", lambda ok: None)
        done = threading.Event()

        def withdraw() -> None:
            transport.withdraw(entry)
            done.set()

        with lock:
            worker = threading.Thread(target=withdraw)
            worker.start()
            assert not done.wait(0.3), "withdraw() ran while the writer held the send lock"
        assert done.wait(5)
        worker.join()


def test_between_one_sender_and_one_recipient_nothing_is_duplicated_or_reordered(
    server: Server, clients: Clients,
) -> None:
    """Six clients talk at once from six threads -- direct messages to random
    peers and broadcasts, numbered per sender -- in large pipelined writes.
    Every recipient sees from each sender exactly the items meant for it, in
    the order sent."""
    names = [f"p{index}" for index in range(6)]
    # One at a time: a login completes before the next starts, so everybody
    # is online, and has heard of p5, before the traffic begins.
    people = {name: clients.login(name) for name in names}
    for name in names[:-1]:
        people[name].read_until(lambda line: line == "<User p5 is online.>")
    rng = random.Random(5)
    plans: dict[str, list[tuple[int, str | None]]] = {
        name: [(item, rng.choice([*[n for n in names if n != name], None]))
               for item in range(400)]
        for name in names
    }
    drains = {name: Drain(people[name].sock, keep=lambda line: line.startswith(b"<M")
                          or line.startswith(b"<B")) for name in names}

    def speak(name: str) -> None:
        lines = [f'chat {to} "{name}:{item}"' if to else f'broadcast "{name}:{item}"'
                 for item, to in plans[name]]
        for start in range(0, len(lines), 50):
            people[name].sock.sendall("".join(f"{line}\n" for line in lines[start:start + 50])
                                      .encode())

    speakers = [threading.Thread(target=speak, args=(name,)) for name in names]
    for thread in speakers:
        thread.start()
    for thread in speakers:
        thread.join(timeout=60)
    expected: dict[str, dict[str, list[int]]] = {name: defaultdict(list) for name in names}
    for sender, plan in plans.items():
        for item, to in plan:
            for recipient in ([to] if to else [n for n in names if n != sender]):
                expected[recipient][sender].append(item)
    try:
        for name in names:
            total = sum(len(items) for items in expected[name].values())
            drains[name].wait_for(lambda d, t=total: len(d.kept()) >= t, timeout=30,
                                  message=f"{name}'s messages")
            seen: dict[str, list[int]] = defaultdict(list)
            for line in drains[name].kept():
                match = re.fullmatch(rb'<(?:Message|Broadcast) from (\w+): "(\w+):(\d+)">', line)
                assert match and match[1] == match[2], line
                seen[match[1].decode()].append(int(match[3]))
            assert seen == expected[name]
    finally:
        for drain in drains.values():
            drain.stop()
