"""The chat logic, written once: what each line from a client causes.

Backends call four entry points -- ``connection_made``, ``data_received``,
``connection_lost`` and ``login_timed_out`` -- and never decide anything about
the chat themselves.  This class never blocks and never touches a socket; it
talks to clients only through :class:`~reactor.session.Session`.  It is not
thread-safe: the threads backend holds one lock around every call, as the
original held its mutex around the whiteboard.

A fan-out formats its event once and hands the same ``bytes`` object to every
recipient.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

from protocol import (
    Broadcast,
    BroadcastFrom,
    BroadcastSent,
    Bye,
    Chat,
    Help,
    HelpText,
    InvalidInput,
    InvalidUsername,
    LineTooLong,
    MessageFrom,
    MessageSent,
    OnlineUsers,
    ProtocolError,
    ServerFull,
    ShuttingDown,
    TooManyFromAddress,
    UsernameTaken,
    UserOffline,
    UserOnline,
    Users,
    UserUnknown,
    decode_line,
    escape,
    format_event,
    parse_command,
    parse_login,
)
from protocol.events import LoginTimedOut
from reactor.config import ServerConfig
from reactor.session import Phase, Session
from reactor.whiteboard import Whiteboard

log = logging.getLogger("reactor")

_HELP = format_event(HelpText())
_FULL = format_event(ServerFull())
_TOO_MANY_FROM_ADDRESS = format_event(TooManyFromAddress())
_SHUTTING_DOWN = format_event(ShuttingDown())
_LOGIN_TIMED_OUT = format_event(LoginTimedOut())


class ChatService:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.whiteboard: Whiteboard[Session] = Whiteboard()
        self._connections: set[Session] = set()
        self._per_address: Counter[str] = Counter()

    # -- connection lifecycle -------------------------------------------------

    def connection_made(self, session: Session) -> bool:
        """Admit a new connection, or refuse it with one line and close it."""
        if len(self._connections) >= self.config.max_clients:
            log.warning("Refused a connection from %s: server full", session.peer_host)
            session.send(_FULL)
            session.close("server full")
            return False
        per_ip = self.config.max_clients_per_ip
        if per_ip and self._per_address[session.peer_host] >= per_ip:
            log.warning("Refused a connection from %s: too many from it", session.peer_host)
            session.send(_TOO_MANY_FROM_ADDRESS)
            session.close("too many connections from one address")
            return False
        self._connections.add(session)
        self._per_address[session.peer_host] += 1
        return True

    def connection_lost(self, session: Session) -> None:
        """The connection is gone (closed by us, EOF, reset, or aborted)."""
        if session in self._connections:
            self._connections.discard(session)
            self._per_address[session.peer_host] -= 1
            if not self._per_address[session.peer_host]:
                del self._per_address[session.peer_host]
        if session.username is not None:
            # A drop is a bye that the client did not get to say.
            name = self._log_out(session, notify_self=False)
            reason = session.close_reason
            if reason and reason.startswith("slow consumer"):
                log.warning("%s disconnected: %s.", name, reason)
            else:
                log.info("%s disconnected.", name)
        session.phase = Phase.CLOSED

    def login_timed_out(self, session: Session) -> None:
        if session.phase is Phase.LOGIN:
            session.send(_LOGIN_TIMED_OUT)
            session.close("login timed out")

    def shutdown(self) -> None:
        """Tell everyone the server is going away and start closing them all."""
        for session in list(self._connections):
            session.send(_SHUTTING_DOWN)
            session.close("server shutting down")

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    # -- input ---------------------------------------------------------------

    def data_received(self, session: Session, data: bytes) -> None:
        """Feed bytes from a client; act on every complete line."""
        for item in session.buffer.feed(data):
            if not session.is_open:
                return  # after bye, the rest of the batch is ignored
            if isinstance(item, LineTooLong):
                self._reject(session, f"line longer than {item.limit} bytes, discarded")
            elif session.phase is Phase.CHATTING:
                self._command_line(session, item)
            else:
                self._login_line(session, item)

    def _reject(self, session: Session, reason: str) -> None:
        if session.phase is Phase.LOGIN:
            session.send(format_event(InvalidUsername(reason)))
        else:
            session.send(format_event(InvalidInput(reason)))

    def _login_line(self, session: Session, raw: bytes) -> None:
        if not raw.strip(b" "):
            return
        try:
            name = parse_login(decode_line(raw)).name
        except ProtocolError as error:
            session.send(format_event(InvalidUsername(error.reason)))
            return
        if not self.whiteboard.claim(name, session):
            taken_as = self.whiteboard.seen_as(name) or name
            session.send(format_event(UsernameTaken(taken_as)))
            return
        session.username = name
        session.phase = Phase.CHATTING
        log.info("%s connected (%s)", name, session.peer_host)
        self._fan_out(format_event(UserOnline(name)), self.whiteboard.online_sessions())

    def _command_line(self, session: Session, raw: bytes) -> None:
        if not raw.strip(b" "):
            return
        try:
            command = parse_command(decode_line(raw))
        except ProtocolError as error:
            session.send(format_event(InvalidInput(error.reason)))
            return
        sender = session.username
        assert sender is not None
        match command:
            case Chat(to, text):
                self._direct_message(session, sender, to, text)
            case Broadcast(text):
                self._broadcast(session, sender, text)
            case Users():
                session.send(format_event(OnlineUsers(tuple(self.whiteboard.online_names()))))
            case Help():
                session.send(_HELP)
            case Bye():
                self._log_out(session, notify_self=True)
                log.info("%s disconnected.", sender)
                session.close("bye")

    # -- what commands cause --------------------------------------------------

    def _direct_message(self, session: Session, sender: str, to: str, text: str) -> None:
        found = self.whiteboard.lookup(to)
        if found is None:
            seen = self.whiteboard.seen_as(to)
            reply = UserUnknown(to) if seen is None else UserOffline(seen)
            session.send(format_event(reply))
            return
        recipient_name, recipient = found
        if not recipient.is_open:
            # Leaving -- its EOF, error or output limit is being dealt with --
            # but not yet gone: it takes no more output, so to a sender it is
            # offline.  Echoing "<To X>" here would report a lost message as sent.
            session.send(format_event(UserOffline(recipient_name)))
            return
        if log.isEnabledFor(logging.INFO):
            log.info('Message from %s to %s: "%s"', sender, recipient_name, escape(text))
        session.send(format_event(MessageSent(recipient_name, text)))
        recipient.send(format_event(MessageFrom(sender, text)))

    def _broadcast(self, session: Session, sender: str, text: str) -> None:
        if log.isEnabledFor(logging.INFO):
            log.info('Broadcast from %s: "%s"', sender, escape(text))
        session.send(format_event(BroadcastSent(text)))
        data = format_event(BroadcastFrom(sender, text))
        for other in self.whiteboard.online_sessions():
            if other is not session:
                other.send(data)

    def _log_out(self, session: Session, *, notify_self: bool) -> str:
        """Take the session's user offline and tell everyone who is left."""
        name = session.username
        assert name is not None
        data = format_event(UserOffline(name))
        if notify_self:
            session.send(data)
        self.whiteboard.release(name)
        session.username = None
        self._fan_out(data, self.whiteboard.online_sessions())
        return name

    @staticmethod
    def _fan_out(data: bytes, sessions: Iterable[Session]) -> None:
        for session in sessions:
            session.send(data)
