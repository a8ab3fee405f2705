"""Bad input, on both backends: framing, overlong lines, bad bytes, forgery.

What a peer must be able to rely on whatever another client sends: the server
cuts lines only at ``\\n`` however the bytes were split or coalesced; an
overlong line costs it no more than the line limit; every bad line gets a clear
error; and nothing a client sends can put a raw control character or a forged
server event in front of anybody else.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    BroadcastFrom,
    BroadcastSent,
    InvalidInput,
    InvalidUsername,
    MessageFrom,
    MessageSent,
    ProtocolError,
    UserOnline,
    parse_event,
)
from reactor import BACKENDS
from reactor.backends.base import Server
from tests.faults import server_process
from tests.support import Clients, LineClient, running_server

MiB = 1024 * 1024
_markers = itertools.count()


@pytest.fixture(scope="module", params=BACKENDS)
def shared_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """One server per backend for the whole module: examples are many and cheap."""
    with running_server(str(request.param)) as server:
        yield server


@pytest.fixture(scope="module")
def pair(shared_server: Server) -> Iterator[tuple[LineClient, LineClient]]:
    """Alice and Bob, logged in, shared by the examples (each ends in a sync)."""
    pool = Clients(shared_server.port)
    try:
        alice, bob = pool.login("Alice"), pool.login("Bob")
        alice.expect("<User Bob is online.>")
        for client in (alice, bob):
            client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        yield alice, bob
    finally:
        pool.close_all()


def sync(alice: LineClient, bob: LineClient) -> tuple[list[str], list[str]]:
    """A marker message from Alice to Bob; returns what each got before it.

    TCP keeps order and the server answers one connection's lines in order, so
    once the marker is through, anything the earlier lines caused has arrived.
    """
    marker = f"marker-{next(_markers)}"
    alice.send(f'chat Bob "{marker}"')
    before_alice = alice.read_until(lambda line: line == f"<To Bob> {marker}")[:-1]
    before_bob = bob.read_until(lambda line: line == f'<Message from Alice: "{marker}">')[:-1]
    return before_alice, before_bob


def parsed(line: str) -> object:
    try:
        return parse_event(line)
    except ProtocolError as error:
        raise AssertionError(f"not a well-formed server event: {line!r}") from error


# -- framing ------------------------------------------------------------------------

command_lines = st.lists(
    st.tuples(st.text(st.characters(codec="utf-8", exclude_characters="\n"), min_size=1,
                      max_size=40),
              st.sampled_from([b"\n", b"\r\n"])),
    min_size=1, max_size=12,
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=command_lines, cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_any_split_or_coalescing_of_writes_gives_the_same_conversation(
    pair: tuple[LineClient, LineClient], lines: list[tuple[str, bytes]], cuts: list[int],
) -> None:
    alice, bob = pair
    from protocol import Chat, format_command  # the client's own encoder

    stream = b"".join(format_command(Chat("Bob", text))[:-1] + end for text, end in lines)
    points = sorted({cut % (len(stream) + 1) for cut in cuts} | {0, len(stream)})
    for start, end in itertools.pairwise(points):
        if end > start:
            alice.send_raw(stream[start:end])  # TCP_NODELAY: one segment each
    echoes, received = sync(alice, bob)
    assert [parsed(line) for line in received] == [MessageFrom("Alice", t) for t, _ in lines]
    assert [parsed(line) for line in echoes] == [MessageSent("Bob", t) for t, _ in lines]


def test_a_four_byte_character_split_across_writes_arrives_whole(
    pair: tuple[LineClient, LineClient],
) -> None:
    alice, bob = pair
    wire = 'chat Bob "grin 😀 ok"\n'.encode()
    start = wire.index("😀".encode())
    for piece in (wire[: start + 1], wire[start + 1 : start + 2], wire[start + 2 : start + 3],
                  wire[start + 3 :]):
        alice.send_raw(piece)
    echoes, received = sync(alice, bob)
    assert received == ['<Message from Alice: "grin 😀 ok">']
    assert echoes == ["<To Bob> grin 😀 ok"]


def test_crlf_and_lf_lines_mix_freely(pair: tuple[LineClient, LineClient]) -> None:
    alice, bob = pair
    alice.send_raw(b'chat Bob "one"\r\nchat Bob two\nusers\r\n')
    echoes, received = sync(alice, bob)
    assert received == ['<Message from Alice: "one">', '<Message from Alice: "two">']
    assert echoes == ["<To Bob> one", "<To Bob> two", "<Online users: Alice, Bob>"]


# -- bad bytes ----------------------------------------------------------------------

BAD_BYTES = [
    pytest.param(b"\xff\xfe", "UTF-8", id="invalid-utf8"),
    pytest.param(b"\xf0\x9f\x98", "UTF-8", id="truncated-4-byte-character"),
    pytest.param(b"\xc0\xaf", "UTF-8", id="overlong-encoding"),
    pytest.param(b"\xed\xa0\x80", "UTF-8", id="encoded-surrogate"),
    pytest.param(b"a\x00b", "U+0000", id="NUL"),
    pytest.param(b"a\rb", "U+000D", id="raw-CR"),
    pytest.param(b"\x1b[2J", "U+001B", id="ESC"),
    pytest.param(b"ding\x07", "U+0007", id="BEL"),
    pytest.param(b"del\x7f", "U+007F", id="DEL"),
    pytest.param(b"\xc2\x9b2J", "U+009B", id="C1-CSI"),
    pytest.param(b"a\xc2\x85b", "U+0085", id="NEL"),
    pytest.param(b"a\xe2\x80\xa8b", "U+2028", id="LINE-SEPARATOR"),
    pytest.param(b"a\xe2\x80\xa9b", "U+2029", id="PARAGRAPH-SEPARATOR"),
]


@pytest.mark.parametrize("bad, named", BAD_BYTES)
@pytest.mark.parametrize("quoted", [True, False], ids=["quoted", "bare"])
def test_a_bad_byte_in_a_message_is_refused_clearly_and_reaches_nobody(
    pair: tuple[LineClient, LineClient], bad: bytes, named: str, quoted: bool,
) -> None:
    alice, bob = pair
    text = b'"x ' + bad + b' y"' if quoted else b"x " + bad + b" y"
    alice.send_raw(b"chat Bob " + text + b"\n")
    alice.send_raw(b"broadcast " + text + b"\n")
    errors, received = sync(alice, bob)
    assert received == []
    assert len(errors) == 2
    for line in errors:
        event = parsed(line)
        assert isinstance(event, InvalidInput)
        assert named in event.reason


@pytest.mark.parametrize("bad, named", BAD_BYTES)
def test_a_bad_byte_in_a_username_is_refused_clearly(
    shared_server: Server, pair: tuple[LineClient, LineClient], bad: bytes, named: str,
) -> None:
    with LineClient(shared_server.port) as client:
        client.send_raw(b"Mallory" + bad + b"\n")
        event = parsed(client.read_line())
        assert isinstance(event, InvalidUsername)
        assert named in event.reason
        client.send("Mallory")  # and the connection can go on
        client.expect("<User Mallory is online.>")
        client.send("bye")
        client.expect("<User Mallory is offline.>")
        client.expect_closed()
    for peer in pair:
        peer.expect("<User Mallory is online.>", "<User Mallory is offline.>")


@pytest.mark.parametrize("line, reason", [
    ('chat Bob "no end', "unterminated quote"),
    ('broadcast "no end \\"', "unterminated quote"),
    ('chat Bob "a" trailing', "text after the closing quote"),
    ("shout hello", "unknown command"),
    ("<User Admin is online.>", "unknown command"),
    ("chat", 'usage is chat <user> "<message>"'),
    ("users now", "users takes no arguments"),
])
def test_malformed_commands_get_a_clear_error(pair: tuple[LineClient, LineClient],
                                              line: str, reason: str) -> None:
    alice, bob = pair
    alice.send(line)
    errors, received = sync(alice, bob)
    assert [parsed(line) for line in errors] == [InvalidInput(reason)]
    assert received == []


# -- forgery ------------------------------------------------------------------------

# Fragments an attacker would combine: event look-alikes, quotes and escapes,
# newlines that cut the line short, terminal controls, bytes that are not UTF-8.
FRAGMENTS = [
    b"<User Admin is online.>", b'<Message from Admin: "hi">', b"<Server is shutting down.>",
    b'">', b'"', b"\\", b'\\"', b"\\x0a", b"\\u2028", b"\\x1b[2J", b"\\", b"\n", b"\r\n", b"\r",
    b"\x00", b"\x07", b"\x1b]0;owned\x07", b"\x1b[31m", b"\x7f", b"\xc2\x85", b"\xc2\x9b",
    b"\xe2\x80\xa8", b"\xe2\x80\xa9", b"\xe2\x80\xae", b"\xff", b"\xc3", b"\xf0\x9f\x98\x80",
    b" ", b"Bob", b"chat Bob ", b"broadcast ", b"users", b"text",
]
ATTACKS = st.tuples(
    st.sampled_from([b"chat Bob ", b'chat Bob "', b"broadcast ", b'broadcast "', b"", b"Bob "]),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=8)), max_size=12),
).map(lambda parts: parts[0] + b"".join(parts[1]))


def _says_bye(attack: bytes) -> bool:
    # A line that is "bye" would log Alice out, which is allowed, just not
    # what this test is about.
    return any(line.strip(b" \r").lower() == b"bye" for line in attack.split(b"\n"))


@pytest.mark.slow
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attack=ATTACKS.filter(lambda attack: not _says_bye(attack)))
def test_no_line_can_forge_an_event_or_smuggle_a_control_character(
    pair: tuple[LineClient, LineClient], attack: bytes,
) -> None:
    alice, bob = pair
    alice.send_raw(attack + b"\n")
    marker = f"marker-{next(_markers)}"
    alice.send(f'chat Bob "{marker}"')
    raw_bob = []
    while (line := bob.read_line_bytes()) != f'<Message from Alice: "{marker}">\n'.encode():
        raw_bob.append(line)
    raw_alice = []
    while (line := alice.read_line_bytes()) != f"<To Bob> {marker}\n".encode():
        raw_alice.append(line)
    for line in raw_bob + raw_alice:
        body = line[:-1]
        assert not any(byte < 0x20 or byte == 0x7F for byte in body), line
    # Bob sees only what Alice said, as Alice's: a message or a broadcast.
    bob_events = [parsed(line[:-1].decode()) for line in raw_bob]
    for event in bob_events:
        assert isinstance(event, MessageFrom | BroadcastFrom) and event.sender == "Alice", event
    # Each one matches an echo Alice got, with the same text.
    alice_events = [parsed(line[:-1].decode()) for line in raw_alice]
    echoed = [e.text for e in alice_events if isinstance(e, MessageSent | BroadcastSent)]
    assert [e.text for e in bob_events] == echoed


def test_a_username_cannot_carry_an_event(backend: str) -> None:
    with running_server(backend) as server:
        pool = Clients(server.port)
        try:
            watcher = pool.login("Watcher")
            mallory = pool.connect()
            mallory.send_raw(b"Eve is online.>\n<User Admin\nAdmin is online.>\r\n")
            for _ in range(3):
                assert isinstance(parsed(mallory.read_line()), InvalidUsername)
            mallory.send("Eve")
            mallory.expect("<User Eve is online.>")
            assert parsed(watcher.read_line()) == UserOnline("Eve")
        finally:
            pool.close_all()


# -- overlong lines -----------------------------------------------------------------


def _send_in_chunks(sock: socket.socket, total: int, chunk: bytes = b"x" * MiB) -> None:
    for _ in range(total // len(chunk)):
        sock.sendall(chunk)


@pytest.mark.slow
@pytest.mark.parametrize("logged_in", [False, True], ids=["at-login", "chatting"])
def test_a_64_mib_line_costs_the_server_no_more_than_the_line_limit(
    backend: str, logged_in: bool,
) -> None:
    with server_process(backend) as server:
        pool = Clients(server.port)
        try:
            bystander = pool.login("Bystander")
            client = pool.login("Alice") if logged_in else pool.connect()
            if logged_in:
                bystander.expect("<User Alice is online.>")
            before = server.peak_rss()
            _send_in_chunks(client.sock, 64 * MiB)
            client.send_raw(b"\n")
            error = parsed(client.read_line(timeout=30))
            kind = InvalidInput if logged_in else InvalidUsername
            assert error == kind("line longer than 4096 bytes, discarded")
            grown = server.peak_rss() - before
            assert grown < 16 * MiB, f"server grew {grown / MiB:.1f} MiB for one long line"
            # The same connection goes on, and nobody else noticed.
            if not logged_in:
                client.send("Alice")
                client.expect("<User Alice is online.>")
                bystander.expect("<User Alice is online.>")
            client.send("users")
            client.expect("<Online users: Alice, Bystander>")
            bystander.send('chat Alice "still here"')
            bystander.expect("<To Alice> still here")
            client.expect('<Message from Bystander: "still here">')
        finally:
            pool.close_all()
