"""A hypothesis state machine drives real clients against each backend.

Random connects, logins (valid, invalid, taken in another case), direct
messages (to the online, the gone and the never-seen), broadcasts, ``users``,
byes and drops (FIN or RST), checked line by line against a model of the
whiteboard that fits in a few dicts.  Every line any client receives must be
exactly the event the model predicts, in order; a stray or missing line fails
the step where it shows.

A permanent observer stays logged in throughout, so that every drop is seen by
somebody before the next step runs: from then on the name is free, and the
model says so.
"""

from __future__ import annotations

import select
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from protocol import (
    Broadcast,
    BroadcastFrom,
    BroadcastSent,
    Bye,
    Chat,
    Event,
    InvalidUsername,
    Login,
    MessageFrom,
    MessageSent,
    OnlineUsers,
    UsernameTaken,
    UserOffline,
    UserOnline,
    Users,
    UserUnknown,
    format_command,
    parse_event,
    username_key,
)
from reactor import BACKENDS, DEFAULT_BACKEND
from tests.faults import reset
from tests.support import LineClient, running_server

# Slow: long hypothesis state-machine runs against every backend.
pytestmark = pytest.mark.slow

OBSERVER = "watch"
NAMES = ["ann", "Ann", "bob", "BOB", "cy", "dee"]  # case variants collide
NEVER_USED = "zed"
BAD_NAMES = ["no good", "everyone", "x" * 33]
MAX_CONNECTIONS = 7
texts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=16)
picks = st.integers(min_value=0, max_value=MAX_CONNECTIONS)


@dataclass(eq=False)
class Connection:
    client: LineClient
    name: str | None = None  # None until logged in
    expected: list[Event] = field(default_factory=list)


class ChatMachine(RuleBasedStateMachine):
    backend = DEFAULT_BACKEND

    def __init__(self) -> None:
        super().__init__()
        self._server = running_server(self.backend, close_linger=0.2)
        self.port = self._server.__enter__().port
        self.connections: list[Connection] = []
        # The model: who is online (key -> connection) and how every name that
        # was ever online was spelt when last seen.
        self.online: dict[str, Connection] = {}
        self.seen: dict[str, str] = {}
        self.observer = self._open()
        self._say(self.observer, format_command(Login(OBSERVER)))
        self._logged_in(self.observer, OBSERVER)
        self._check()

    # -- the model's bookkeeping ----------------------------------------------

    def _open(self) -> Connection:
        connection = Connection(LineClient(self.port))
        self.connections.append(connection)
        return connection

    def _say(self, connection: Connection, line: bytes) -> None:
        connection.client.send_raw(line)

    def _tell_online(self, event: Event, *, but: Connection | None = None) -> None:
        for connection in self.online.values():
            if connection is not but:
                connection.expected.append(event)

    def _logged_in(self, connection: Connection, name: str) -> None:
        connection.name = name
        self.online[username_key(name)] = connection
        self.seen[username_key(name)] = name
        self._tell_online(UserOnline(name))

    def _gone(self, connection: Connection) -> None:
        self.connections.remove(connection)
        if connection.name is not None:
            del self.online[username_key(connection.name)]
            self._tell_online(UserOffline(connection.name))

    def _check(self) -> None:
        """Every connection gets exactly what the model expects, in order."""
        for connection in self.connections:
            for event in connection.expected:
                line = connection.client.read_line()
                assert parse_event(line) == event, (connection.name, line, event)
            connection.expected.clear()

    def _users(self, *, logged_in: bool) -> list[Connection]:
        return [c for c in self.connections
                if (c.name is not None) == logged_in and c is not self.observer]

    @staticmethod
    def _pick(candidates: list[Connection], index: int) -> Connection:
        return candidates[index % len(candidates)]

    # -- rules ----------------------------------------------------------------------

    @precondition(lambda self: len(self.connections) < MAX_CONNECTIONS)
    @rule()
    def connect(self) -> None:
        self._open()

    @initialize(name=st.sampled_from(NAMES))
    def somebody_is_online(self, name: str) -> None:
        self.log_in(0, name)

    @precondition(lambda self: self._users(logged_in=False)
                  or len(self.connections) < MAX_CONNECTIONS)
    @rule(index=picks, name=st.sampled_from(NAMES + BAD_NAMES))
    def log_in(self, index: int, name: str) -> None:
        waiting = self._users(logged_in=False)
        connection = self._pick(waiting, index) if waiting else self._open()
        self._say(connection, name.encode() + b"\n")
        holder = self.online.get(username_key(name))
        if name in BAD_NAMES:
            reply = connection.client.read_line()
            assert isinstance(parse_event(reply), InvalidUsername), reply
        elif holder is not None:
            connection.expected.append(UsernameTaken(holder.name or ""))
        else:
            self._logged_in(connection, name)
        self._check()

    @precondition(lambda self: self._users(logged_in=True))
    @rule(index=picks, to=st.sampled_from([*NAMES, NEVER_USED, OBSERVER]), text=texts)
    def chat(self, index: int, to: str, text: str) -> None:
        sender = self._pick(self._users(logged_in=True), index)
        assert sender.name is not None
        self._say(sender, format_command(Chat(to, text)))
        recipient = self.online.get(username_key(to))
        if recipient is not None:
            assert recipient.name is not None
            sender.expected.append(MessageSent(recipient.name, text))
            recipient.expected.append(MessageFrom(sender.name, text))
        elif username_key(to) in self.seen:
            sender.expected.append(UserOffline(self.seen[username_key(to)]))
        else:
            sender.expected.append(UserUnknown(to))
        self._check()

    @precondition(lambda self: self._users(logged_in=True))
    @rule(index=picks, text=texts)
    def broadcast(self, index: int, text: str) -> None:
        sender = self._pick(self._users(logged_in=True), index)
        assert sender.name is not None
        self._say(sender, format_command(Broadcast(text)))
        sender.expected.append(BroadcastSent(text))
        self._tell_online(BroadcastFrom(sender.name, text), but=sender)
        self._check()

    @precondition(lambda self: self._users(logged_in=True))
    @rule(index=picks)
    def users(self, index: int) -> None:
        asker = self._pick(self._users(logged_in=True), index)
        self._say(asker, format_command(Users()))
        names = sorted((c.name or "" for c in self.online.values()), key=str.casefold)
        asker.expected.append(OnlineUsers(tuple(names)))
        self._check()

    @precondition(lambda self: self._users(logged_in=True))
    @rule(index=picks)
    def bye(self, index: int) -> None:
        leaver = self._pick(self._users(logged_in=True), index)
        assert leaver.name is not None
        self._say(leaver, format_command(Bye()))
        leaver.client.expect(f"<User {leaver.name} is offline.>")
        assert leaver.client.expect_closed() == b""
        leaver.client.close()
        self._gone(leaver)
        self._check()

    @precondition(lambda self: len(self.connections) > 1)
    @rule(index=picks, rst=st.booleans(), half_line=st.booleans())
    def drop(self, index: int, rst: bool, half_line: bool) -> None:
        candidates = [c for c in self.connections if c is not self.observer]
        leaver = self._pick(candidates, index)
        if half_line:
            self._say(leaver, b'broadcast "never finish')
        if rst:
            reset(leaver.client.sock)
        else:
            leaver.client.close()
        self._gone(leaver)
        self._check()  # the observer, at least, hears of it before the next step

    def teardown(self) -> None:
        try:
            # Nothing unexpected is waiting anywhere: a round trip for the
            # logged in, silence for the rest.
            for connection in self.connections:
                if connection.name is not None:
                    self._say(connection, format_command(Users()))
                    line = connection.client.read_line()
                    assert isinstance(parse_event(line), OnlineUsers), (connection.name, line)
                else:
                    sock = connection.client.sock
                    assert not select.select([sock], [], [], 0)[0], "unexpected data"
        finally:
            for connection in self.connections:
                connection.client.close()
            self._stop_servers()

    def _stop_servers(self) -> None:
        self._server.__exit__(None, None, None)


SETTINGS = settings(max_examples=60, stateful_step_count=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# One state machine test per backend in the registry: TestSelectBackend, ...
for _name in BACKENDS:
    _machine = type(f"{_name.capitalize()}ChatMachine", (ChatMachine,), {"backend": _name})
    _test = _machine.TestCase
    _test.settings = SETTINGS
    globals()[f"Test{_name.capitalize()}Backend"] = _test
