"""Test helpers: real servers on ephemeral ports, and line clients with deadlines.

Nothing here sleeps to synchronise: every wait is for a condition (a line
arriving, a socket closing) with a deadline, and a missed deadline fails the
test with what was seen so far.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

from protocol.events import (
    format_broadcast_from,
    format_broadcast_sent,
    format_message_from,
    format_message_sent,
)
from reactor import ServerConfig, make_server
from reactor.backends import server_class
from reactor.backends.base import Server
from reactor.sockets import KernelRoom

DEFAULT_TIMEOUT = 10.0
TEST_CONFIG = ServerConfig(host="127.0.0.1", port=0, keepalive_idle=0)

# The time a server's log line begins with unless --log-time off (RFC 3339,
# to the millisecond, in UTC or with an offset).
LOG_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(?:Z|[+-]\d\d:\d\d) ")


def without_log_time(line: str) -> str:
    """A server's log line as the original wrote it: ``[Server] ...``, without
    the timestamp it begins with (if it has one)."""
    found = LOG_TIME.match(line)
    return line[found.end():] if found else line


def accepts_loop(backend: str) -> bool:
    """Whether the backend runs on an event loop chosen with ``--loop``."""
    return "loop" in inspect.signature(server_class(backend)).parameters


@contextlib.contextmanager
def running_server(backend: str, *, options: dict[str, object] | None = None,
                   **overrides: object) -> Iterator[Server]:
    """A server in a background thread, stopped and joined on exit.

    ``overrides`` change the configuration; ``options`` go to the backend.
    """
    if options is None and os.environ.get("REACTOR_TEST_LOOP") and accepts_loop(backend):
        # REACTOR_TEST_LOOP=uvloop runs every in-process test of the loop
        # backends on that loop.
        options = {"loop": os.environ["REACTOR_TEST_LOOP"]}
    server = make_server(replace(TEST_CONFIG, **overrides), backend, **(options or {}))
    thread = threading.Thread(target=server.serve_forever, name=f"server-{backend}", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(timeout=15)
        assert not thread.is_alive(), "server did not stop"


def wait_until(condition: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT,
               message: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.005)  # a poll interval, not a synchronisation


class LineClient:
    """A raw TCP client that reads whole lines with deadlines."""

    def __init__(self, port: int, host: str = "127.0.0.1", source: str | None = None) -> None:
        # ``source`` picks the local address: any of 127/8 is loopback, so one
        # machine can stand for several client hosts.
        self.sock = socket.create_connection(
            (host, port), timeout=DEFAULT_TIMEOUT,
            source_address=None if source is None else (source, 0),
        )
        self._buffer = bytearray()
        self.closed_by_server = False

    # -- sending --------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode("utf-8") + b"\n")

    # -- receiving ------------------------------------------------------------

    def _fill(self, deadline: float) -> bool:
        """Read once; False on EOF.  Raises TimeoutError past the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed_by_server = True
            return False
        self._buffer += chunk
        return True

    def read_line_bytes(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[: newline + 1])
                del self._buffer[: newline + 1]
                return line
            try:
                if not self._fill(deadline):
                    raise AssertionError(
                        f"server closed the connection; unterminated data: {bytes(self._buffer)!r}"
                    )
            except TimeoutError:
                raise AssertionError(
                    f"no complete line within {timeout}s; have {bytes(self._buffer)!r}"
                ) from None

    def read_line(self, timeout: float = DEFAULT_TIMEOUT) -> str:
        """The next line, decoded, without its newline."""
        return self.read_line_bytes(timeout).decode("utf-8")[:-1]

    def expect(self, *lines: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """The next lines are exactly ``lines``, in order."""
        for expected in lines:
            assert self.read_line(timeout) == expected

    def read_until(self, predicate: Callable[[str], bool],
                   timeout: float = DEFAULT_TIMEOUT) -> list[str]:
        """Lines up to and including the first that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            line = self.read_line(max(0.001, deadline - time.monotonic()))
            seen.append(line)
            if predicate(line):
                return seen

    def expect_closed(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Wait for the server to close; returns any bytes that came before EOF."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except TimeoutError:
            raise AssertionError(
                f"server did not close within {timeout}s; have {bytes(self._buffer)!r}"
            ) from None
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    def expect_silence(self, timeout: float = 0.3) -> None:
        """Nothing arrives within ``timeout`` (used after a marker round trip)."""
        assert not self._buffer, f"unexpected data: {bytes(self._buffer)!r}"
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected data: {data!r}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> LineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Clients:
    """Opens clients against one server and closes them all at the end."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._all: list[LineClient] = []

    def connect(self) -> LineClient:
        client = LineClient(self.port)
        self._all.append(client)
        return client

    def login(self, name: str, *, expect_online: bool = True) -> LineClient:
        """Connect and log in as ``name``; by default wait for our own online notice."""
        client = self.connect()
        client.send(name)
        if expect_online:
            client.expect(f"<User {name} is online.>")
        return client

    def close_all(self) -> None:
        for client in self._all:
            client.close()

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_all()



def the_original_conversation(clients: Clients) -> None:
    """The original exercise's conversation, byte for byte: the seed test of
    any server, however it was started."""
    alice = clients.login("Alice")
    bob = clients.connect()
    bob.send("Bob")
    bob.expect("<User Bob is online.>")
    alice.expect("<User Bob is online.>")

    alice.send('chat Bob "Hello Bob!"')
    assert alice.read_line_bytes() == b"<To Bob> Hello Bob!\n"
    assert bob.read_line_bytes() == b'<Message from Alice: "Hello Bob!">\n'

    bob.send("bye")
    assert bob.read_line_bytes() == b"<User Bob is offline.>\n"
    assert bob.expect_closed() == b""
    assert alice.read_line_bytes() == b"<User Bob is offline.>\n"


def a_flooder_is_metered_while_others_chat(flooder: LineClient, alice: LineClient,
                                           bob: LineClient) -> None:
    """Flooder (logged in, under a rate of lines well below 300 a second)
    writes 300 lines at once; Alice and Bob chat meanwhile; every one of the
    flooder's lines is answered, in order: metered, never dropped."""
    flooder.send_raw(b"".join(f'chat Flooder "f{i}"\n'.encode() for i in range(300)))
    alice.send('chat Bob "meanwhile"')
    alice.expect("<To Bob> meanwhile")
    bob.expect('<Message from Alice: "meanwhile">')
    seen = flooder.read_until(lambda line: line == '<Message from Flooder: "f299">', timeout=30)
    echoes = [line for line in seen if line.startswith("<To Flooder> ")]
    assert echoes == [f"<To Flooder> f{i}" for i in range(300)]


def send_a_burst_and_check_it(sender: LineClient, readers: dict[str, LineClient],
                              every_nth_a_message: int) -> None:
    """``sender`` writes 60 broadcasts and direct messages (every nth, 0 for
    none) to ``readers`` (logged in, in that order, after the sender) in one
    write, then ``users``; each reader must get exactly its lines, in order,
    and the sender every echo in command order."""
    names = list(readers)
    for client in (sender, *list(readers.values())[:-1]):  # the last one read its own
        client.read_until(lambda line: line == f"<User {names[-1]} is online.>")
    lines: list[str] = []
    echoes: list[bytes] = []
    expected: dict[str, list[bytes]] = {name: [] for name in names}
    for i in range(60):
        if every_nth_a_message and i % every_nth_a_message == every_nth_a_message - 1:
            to = names[i % len(names)]
            lines.append(f'chat {to} "d{i}"')
            echoes.append(format_message_sent(to, f"d{i}"))
            expected[to].append(format_message_from("Sender", f"d{i}"))
        else:
            lines.append(f'broadcast "b{i}"')
            echoes.append(format_broadcast_sent(f"b{i}"))
            for name in names:
                expected[name].append(format_broadcast_from("Sender", f"b{i}"))
    # Last, a line that sends the readers nothing: the burst's fan-outs must
    # go out without help from a later write.
    lines.append("users")
    sender.send_raw("".join(line + "\n" for line in lines).encode())

    assert [sender.read_line_bytes() for _ in echoes] == echoes
    assert sender.read_line().startswith("<Online users: ")
    for name, client in readers.items():
        assert [client.read_line_bytes() for _ in expected[name]] == expected[name]
    # Nothing more (a marker round trip: anything doubled would come first).
    for client in (sender, *readers.values()):
        client.send("users")
        assert client.read_line().startswith("<Online users: ")


# -- direct messages sent at once (the select and threads backends' send_now) ---


def loopback_tcp(sndbuf: int) -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair, the server's end and the client's
    (the kernel rule send_now counts on is TCP's): the server's with a send
    buffer of ``sndbuf`` (doubled by Linux) and no Nagle delay, the
    client's with a receive buffer that fills soon."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        theirs = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    ours.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ours, theirs


def count_room_checks(transport: KernelRoom) -> list[bool]:
    """The answers of the transport's writability polls, from now on."""
    checks: list[bool] = []
    has_room = transport._has_room

    def counted() -> bool:
        checks.append(has_room())
        return checks[-1]

    transport._has_room = counted  # type: ignore[method-assign]
    return checks


def _send_now_until_refused(send_now: Callable[[bytes], int], sizes: list[int]) -> bytes:
    """``send_now`` of one direct message at a time (of the ``sizes`` in
    turn), as deliver offers them, to a peer that does not read, until one
    is refused; what the kernel took.  Fails on a message half sent."""
    taken = bytearray()
    for number, size in enumerate(itertools.islice(itertools.cycle(sizes), 100_000)):
        message = b"<Message from Alice: %d %s>\n" % (number, b"m" * size)
        sent = send_now(message)
        assert sent in (0, len(message)), f"message {number} was half sent ({sent} bytes)"
        if not sent:
            return bytes(taken)
        taken += message
    raise AssertionError("the peer's kernel took everything")


def check_send_now_whole_or_none(
        connect: Callable[[], tuple[KernelRoom, Callable[[bytes], int], socket.socket]],
        sndbuf: int, sizes: list[int]) -> None:
    """send_now asks the kernel for room only when what it sent since the
    last writable answer could have used it up (reactor.sockets'
    room_after_writable): to a peer who stops reading it still hands the
    kernel each direct message whole or not at all, as when it asks every
    time, and the peer reads exactly what it took -- with fewer polls.

    ``connect`` gives a new connection over :func:`loopback_tcp` with a send
    buffer of ``sndbuf``: its transport, its send_now as deliver calls it
    (one message a turn), and the client's socket."""
    results = []
    for asks_every_time in (False, True):
        transport, send_now, client = connect()
        if asks_every_time:
            transport._room_after_writable = 0  # the general path: no room known
        checks = count_room_checks(transport)
        taken = _send_now_until_refused(send_now, sizes)
        assert checks[-1] is False  # refused because the kernel had no room
        client.settimeout(DEFAULT_TIMEOUT)
        received = b""
        while len(received) < len(taken):
            chunk = client.recv(1 << 20)
            assert chunk, "the server closed the connection"
            received += chunk
        assert received == taken  # whole lines, in order, nothing else
        results.append((taken.count(b"\n"), len(checks)))
    (sent_fast, polls_fast), (sent_general, polls_general) = results
    assert polls_general == sent_general + 1 and polls_fast <= polls_general
    if sizes == [20] and sndbuf > 64 * 1024:
        assert polls_fast < sent_fast / 10
