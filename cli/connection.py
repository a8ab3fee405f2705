"""One connection to the chat server: connect, log in, then read in a thread.

The login handshake is done here, synchronously and with a deadline, before
either front end starts: send ``format_command(Login(name))`` and read lines
until the server's ``<User NAME is online.>`` for our own name (success) or
one of its refusals (failure, with the server's reason).  After that a daemon
thread reads the socket and hands every line, already made safe by
:mod:`cli.display`, to the front end; the front end decides what "the server
closed the connection" means.

Logging out is confirmed, not assumed: after ``bye`` the server sends our own
``<User NAME is offline.>`` and closes.  Only a close that follows that line
counts as a clean logout; any other close is the server going away.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable

from cli.display import MAX_SERVER_LINE, ServerLine, render
from cli.tls import TLSStream, handshake_error
from protocol import (
    Banned,
    Bye,
    Command,
    Disconnected,
    InvalidUsername,
    LineBuffer,
    Login,
    LoginTimedOut,
    PasswordRequired,
    ServerBusy,
    ServerFull,
    ServiceUnavailable,
    ShuttingDown,
    TooManyFromAddress,
    TooManyTries,
    UsernameTaken,
    UserOffline,
    UserOnline,
    WrongPassword,
    escape,
    format_command,
    format_password,
    username_key,
)

PROG = "reactor-chat"
CONNECT_TIMEOUT = 10.0
LOGIN_TIMEOUT = 10.0
# For scripts: the password of a registered name (see log_in).
PASSWORD_VARIABLE = "REACTOR_CHAT_PASSWORD"

# Asked for the password of a registered name: (name, attempt from 1) ->
# the password, or None to give up.
PasswordSource = Callable[[str, int], str | None]


def password_needed(event: object, own_key: str) -> int:
    """1 if ``event`` asks us for our password, 2 if it says ours was wrong, else 0."""
    if isinstance(event, PasswordRequired | WrongPassword) \
            and username_key(event.name) == own_key:
        return 1 if isinstance(event, PasswordRequired) else 2
    return 0


def no_password(attempt: int) -> str:
    """Why the login ends when no password (or no other one) is given."""
    if attempt > 1:
        return "wrong password"
    return (f"the name is registered; give its password in {PASSWORD_VARIABLE} "
            "or on a terminal")


def speaks_tls(first_bytes: bytes) -> bool:
    """True if a server's first bytes are a TLS record (an alert or a handshake):
    a plain client has reached a TLS port."""
    return (len(first_bytes) >= 3 and first_bytes[0] in (0x15, 0x16)
            and first_bytes[1] == 3 and first_bytes[2] <= 4)


ANSWERED_IN_TLS = "the server answered in TLS (that is its TLS port: add --tls)"


def closed_before_verdict(heard: bytes, plain: bool) -> str:
    """Why the login ended when the server closed before its verdict.

    A chat server answers every login with a line; a TLS port shuts a plain
    client out without a word, or with a TLS alert.  Both get the hint the
    opposite mistake gets (a TLS client on the plain port).
    """
    if plain and speaks_tls(heard):
        return ANSWERED_IN_TLS
    if plain and not heard:
        return ("the server closed the connection without a word "
                "(is that the server's TLS port? then add --tls)")
    return "the server closed the connection"


class ClientError(Exception):
    """A problem the user is told about in one line on stderr (exit status 1)."""

    @property
    def line(self) -> str:
        return f"{PROG}: {self}"


class ConnectFailed(ClientError):
    pass


class LoginRefused(ClientError):
    pass


class ConnectionLost(ClientError):
    """The server went away mid-session."""

    def __init__(self) -> None:
        super().__init__("Disconnected from server.")

    @property
    def line(self) -> str:
        return str(self)


def connect(host: str, port: int, timeout: float = CONNECT_TIMEOUT,
            tls: ssl.SSLContext | None = None) -> Connection:
    """Open a TCP connection (and with ``tls`` complete the TLS handshake),
    turning every error into one readable line."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except (OSError, UnicodeError, OverflowError) as error:
        raise ConnectFailed(connect_error(error, host, port, timeout)) from None
    # Commands are single short writes; waiting for an ACK before sending the
    # next one (Nagle) would only add latency.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is None:
        return Connection(sock, plain=True)
    stream = TLSStream(sock, tls, host.strip("[]"))
    try:
        stream.handshake()
    except OSError as error:  # ssl.SSLError included
        sock.close()
        raise ConnectFailed(connect_error(error, host, port, timeout)) from None
    return Connection(stream)  # type: ignore[arg-type]


def connect_error(error: BaseException, host: str, port: int, timeout: float) -> str:
    """``cannot connect to HOST:PORT: REASON`` for an exception from connecting."""
    where = f"{escape(host, quoted=False)}:{port}"
    reason = connect_reason(error, timeout)
    if isinstance(error, ConnectionRefusedError):
        reason += " (is the server running?)"
    return f"cannot connect to {where}: {reason}"


def connect_reason(error: BaseException, timeout: float) -> str:
    """Why connecting failed, in a few words (``connection refused``)."""
    if isinstance(error, socket.gaierror):
        return f"unknown host ({error.strerror})"
    if isinstance(error, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    tls_reason = handshake_error(error)
    if tls_reason is not None:
        return tls_reason
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return reason[:1].lower() + reason[1:]


def refusal(event: object) -> str | None:
    """The reason to give the user if ``event`` refuses our login, else None."""
    match event:
        case UsernameTaken(name):
            return f"the username {name} is already taken"
        case InvalidUsername(reason):
            return f"the server rejected the username: {reason}"
        case ServerFull():
            return "the server is full"
        case ServerBusy():
            return "the server is busy: try again in a moment"
        case TooManyFromAddress():
            return "the server allows no more connections from your address"
        case LoginTimedOut():
            return "the server timed out the login"
        case ShuttingDown():
            return "the server is shutting down"
        case TooManyTries():
            return "too many wrong passwords"
        case ServiceUnavailable(reason):
            return f"the chat service is unavailable: {reason}"
        case Disconnected(reason):
            return f"the server disconnected: {reason}"
        case Banned(by, duration, reason):
            lasting = f" for {duration}" if duration else ""
            return f"banned by {by}{lasting}" + (f": {reason}" if reason else "")
    return None


class Connection:
    """A logged-in (or logging-in) connection.

    ``send`` may be called from one thread while the reader thread runs; the
    socket is never read by two threads at once.
    """

    def __init__(self, sock: socket.socket, plain: bool = False) -> None:
        self._sock = sock
        self._plain = plain  # not TLS: a TLS port's answer gets a hint
        self._buffer = LineBuffer(MAX_SERVER_LINE)
        self._send_lock = threading.Lock()
        self._pending: list[ServerLine] = []
        self._name_key: str | None = None
        self._bye_sent = False
        self._logout_confirmed = False
        self._reader: threading.Thread | None = None

    # -- login ----------------------------------------------------------------

    def log_in(self, name: str, show: Callable[[ServerLine], None],
               timeout: float = LOGIN_TIMEOUT, password: PasswordSource | None = None) -> None:
        """Send the username and wait for the server's verdict.

        Lines that arrive before the verdict, and the success line itself, go
        to ``show``.  If the name is registered (``<Password required ...>``,
        or ``<Wrong password ...>`` after a wrong one) ``password`` is asked
        and its answer sent, quoted.  Raises :class:`LoginRefused` with the
        server's reason, or when the server closes or stays silent, or when
        no password is given.
        """
        attempt = 0
        who = f"cannot log in as {name}"
        self._name_key = username_key(name)
        # A full server says so and closes at once, possibly before our name
        # arrives; a failed send is no verdict, the reason is read below.
        with contextlib.suppress(ConnectionLost):
            self.send_bytes(format_command(Login(name)))
        deadline = time.monotonic() + timeout
        heard = b""  # the server's first bytes: are they TLS?
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LoginRefused(f"{who}: no reply from the server within {timeout:g} s")
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                data = b""  # closed with our name unread: a close all the same
            except OSError as error:
                raise LoginRefused(f"{who}: {error.strerror or error}") from None
            if not data:
                raise LoginRefused(f"{who}: {closed_before_verdict(heard, self._plain)}")
            if len(heard) < 3:
                heard = (heard + data)[:3]
                if self._plain and speaks_tls(heard):
                    raise LoginRefused(f"{who}: {ANSWERED_IN_TLS}")
            lines = [render(item) for item in self._buffer.feed(data)]
            for index, line in enumerate(lines):
                reason = refusal(line.event)
                if reason is not None:
                    raise LoginRefused(f"{who}: {reason}")
                show(line)
                if password_needed(line.event, self._name_key):
                    attempt += 1
                    given = password(name, attempt) if password is not None else None
                    if given is None:
                        raise LoginRefused(f"{who}: {no_password(attempt)}")
                    with contextlib.suppress(ConnectionLost):
                        self.send_bytes(format_password(given))
                    deadline = time.monotonic() + timeout  # the person took their time
                    continue
                if isinstance(line.event, UserOnline) and self._is_me(line.event.name):
                    # Whatever came in the same segment after our own online
                    # notice belongs to the session, not to the login.
                    self._pending = lines[index + 1 :]
                    self._sock.settimeout(None)
                    return

    def _is_me(self, name: str) -> bool:
        return username_key(name) == self._name_key

    # -- the session ----------------------------------------------------------

    def start(self, on_lines: Callable[[list[ServerLine], int], None],
              on_closed: Callable[[bool], None]) -> None:
        """Start the reader thread.

        ``on_lines`` is called in that thread with the lines of each read
        and the bytes they came in; the socket is not read again until it
        returns, so a slow ``on_lines`` slows the server down.  ``on_closed``
        is called once at the end, with True if the close followed a
        confirmed logout.
        """
        self._reader = threading.Thread(
            target=self._read_loop, args=(on_lines, on_closed), name="server-reader", daemon=True
        )
        self._reader.start()

    def _read_loop(self, on_lines: Callable[[list[ServerLine], int], None],
                   on_closed: Callable[[bool], None]) -> None:
        pending, self._pending = self._pending, []
        on_lines(self._seen(pending), 0)
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            on_lines(self._seen([render(item) for item in self._buffer.feed(data)]), len(data))
        if self._buffer.pending:
            # A last line without its newline is still shown (escaped).
            on_lines(self._seen([render(item) for item in self._buffer.feed(b"\n")]), 0)
        on_closed(self._logout_confirmed)

    def _seen(self, lines: list[ServerLine]) -> list[ServerLine]:
        """Note our own offline line after ``bye``: the logout is confirmed."""
        if self._bye_sent:
            for line in lines:
                if isinstance(line.event, UserOffline) and self._is_me(line.event.name):
                    self._logout_confirmed = True
        return lines

    def send(self, command: Command) -> None:
        """Send one command; raises :class:`ConnectionLost` if the server is gone."""
        self.send_bytes(format_command(command))

    def logging_out(self) -> bytes:
        """``bye`` on the wire, for the caller to send: from now on our own
        offline line confirms the logout (reported via ``on_closed``)."""
        self._bye_sent = True
        return format_command(Bye())

    def abort(self) -> None:
        """Shut the socket down; the reader thread sees the end and reports it."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def send_bytes(self, data: bytes) -> None:
        """Send bytes already formatted; raises :class:`ConnectionLost` if the server is gone."""
        try:
            with self._send_lock:
                self._sock.sendall(data)
        except OSError:
            raise ConnectionLost from None

    def close(self) -> None:
        """Close the socket; the reader thread, if any, sees EOF and ends."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=1.0)
