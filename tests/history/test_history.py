"""History and offline messages (``--history on``), as users see them over real sockets, on every backend.

Registered names use tiny scrypt parameters; the SQLite files live in a
temporary directory, and a restart is a second server on the same files.
"""

from __future__ import annotations

from pathlib import Path

from protocol import (
    Chat,
    MessageFrom,
    MessageSent,
    WaitingDelivered,
    WaitingMessage,
    format_event,
)
from reactor.accounts.store import SQLiteAccountStore
from reactor.app import forget_stored_messages
from reactor.chat import NO_HISTORY
from reactor.config import AccountsConfig, HistoryConfig
from reactor.history.sqlite import SQLiteHistory, history_path
from reactor.stored import NEEDS_REGISTERED, wall_clock_ms
from tests.history.support import (
    FAST_HASH,
    HOSTILE,
    INVALID,
    PASSWORD,
    alice_and_bob,
    event,
    history,
    history_server,
    log_in,
    register,
    typed,
)
from tests.support import running_server


def test_a_message_for_a_registered_name_that_is_offline_waits_for_its_next_login(
        backend: str, db: str) -> None:
    with history_server(backend, db) as server:
        register(server.port, "Bob")
        with log_in(server.port, "Alice") as alice:
            alice.send('chat Bob "first"')
            alice.expect("<Message to Bob stored until they log in.>")
            alice.send(typed(Chat("bob", HOSTILE)))
            alice.expect("<Message to Bob stored until they log in.>")
            with log_in(server.port, "Bob", PASSWORD) as bob:
                first, second = event(bob), event(bob)
                assert isinstance(first, WaitingMessage) and isinstance(second, WaitingMessage)
                assert (first.sender, first.text) == ("Alice", "first")
                assert (second.sender, second.text) == ("Alice", HOSTILE)
                assert first.time <= second.time
                alice.expect("<User Bob is online.>")
                assert event(alice) == WaitingDelivered("Bob", first.time)
                assert event(alice) == WaitingDelivered("Bob", second.time)
            alice.expect("<User Bob is offline.>")
            with log_in(server.port, "Bob", PASSWORD) as bob:
                bob.send("users")  # nothing waits any more: the next line is the answer
                bob.expect("<Online users: Alice, Bob>")


def test_an_unregistered_name_that_is_offline_gets_todays_replies(
        backend: str, db: str) -> None:
    with history_server(backend, db) as server:
        with log_in(server.port, "Carol") as carol:
            carol.send("bye")  # gone for the server before it closes her connection
            carol.expect_closed()
        with log_in(server.port, "Alice") as alice:
            alice.send("chat Carol hi")
            alice.expect("<User Carol is offline.>")
            alice.send("chat Dave hi")
            alice.expect("<User Dave does not exist.>")


def test_beyond_the_waiting_cap_the_sender_is_told_nothing_was_stored(
        backend: str, db: str) -> None:
    with history_server(backend, db, waiting_max=2) as server:
        register(server.port, "Bob")
        with log_in(server.port, "Alice") as alice:
            for n in range(2):
                alice.send(f"chat Bob {n}")
                alice.expect("<Message to Bob stored until they log in.>")
            alice.send("chat Bob one too many")
            alice.expect("<Message to Bob not delivered: too many messages wait for Bob.>")
        with log_in(server.port, "Bob", PASSWORD) as bob:
            assert [event(bob).text for _ in range(2)] == ["0", "1"]  # type: ignore[attr-defined]
            bob.send("users")
            bob.expect("<Online users: Bob>")


def test_history_pages_back_through_a_conversation_and_escapes_as_live(
        backend: str, db: str) -> None:
    with history_server(backend, db) as server, alice_and_bob(server.port) as (alice, bob):
        for n in range(5):
            alice.send(f"chat Bob {n}")
            alice.expect(f"<To Bob> {n}")
            bob.expect(f'<Message from Alice: "{n}">')
        bob.send(typed(Chat("Alice", HOSTILE)))
        assert isinstance(event(bob), MessageSent)
        live = alice.read_line()
        assert live == format_event(MessageFrom("Bob", HOSTILE)).decode()[:-1]
        newest = history(alice, "history Bob 3")
        assert [line.text for line in newest] == ["3", "4", HOSTILE]
        assert [(line.sender, line.to) for line in newest] == [
            ("Alice", "Bob"), ("Alice", "Bob"), ("Bob", "Alice")]
        assert (format_event(newest[-1]).decode()[:-1].split(": ", 1)[1]
                == live.split(": ", 1)[1])
        earlier = history(alice, f"history bob before {newest[0].id} 100")
        assert [line.text for line in earlier] == ["0", "1", "2"]
        assert history(alice, f"history Bob before {earlier[0].id}") == []
        # Bob has his own copy.
        assert [line.text for line in history(bob, "history Alice")] == [
            "0", "1", "2", "3", "4", HOSTILE]


def test_history_with_one_user_needs_a_registered_name_and_broadcasts_are_public(
        backend: str, db: str) -> None:
    with history_server(backend, db) as server, log_in(server.port, "Alice") as alice:
        alice.send("broadcast hello all")
        alice.expect("<To everyone> hello all")
        alice.send("history Bob")
        alice.expect(INVALID.format(NEEDS_REGISTERED))
        alice.send("history Bob 101")
        alice.expect(INVALID.format("a history page holds 1 to 100 messages"))
        lines = history(alice, "history everyone")
        assert [(line.sender, line.to, line.text) for line in lines] == [
            ("Alice", "everyone", "hello all")]


def test_a_login_gets_the_recent_broadcasts(backend: str) -> None:
    with history_server(backend, None, login_backlog=2) as server, \
            log_in(server.port, "Alice") as alice:
        for n in range(3):
            alice.send(f"broadcast {n}")
            alice.expect(f"<To everyone> {n}")
        with log_in(server.port, "Bob") as bob:
            backlog = [event(bob), event(bob)]
            assert [line.text for line in backlog] == ["1", "2"]  # type: ignore[attr-defined]
            bob.send("history Alice")  # no account: nothing private for anyone
            bob.expect(INVALID.format(NEEDS_REGISTERED))


def test_a_restart_keeps_waiting_messages_and_history(backend: str, db: str) -> None:
    with history_server(backend, db) as server:
        register(server.port, "Alice", "Bob")
        with log_in(server.port, "Alice", PASSWORD) as alice:
            alice.send("chat Bob before the restart")
            alice.expect("<Message to Bob stored until they log in.>")
    with history_server(backend, db) as server:
        with log_in(server.port, "Bob", PASSWORD) as bob:
            got = event(bob)
            assert isinstance(got, WaitingMessage) and got.text == "before the restart"
            assert [line.text for line in history(bob, "history Alice")] == ["before the restart"]
        with log_in(server.port, "Alice", PASSWORD) as alice:
            assert [line.text for line in history(alice, "history Bob")] == [
                "before the restart"]


def test_whoever_takes_a_removed_name_sees_nothing_of_its_messages(
        backend: str, db: str) -> None:
    with history_server(backend, db) as server:
        with alice_and_bob(server.port) as (alice, bob):
            alice.send("chat Bob secret")
            alice.expect("<To Bob> secret")
            bob.expect('<Message from Alice: "secret">')
            bob.send("bye")
            bob.expect("<User Bob is offline.>")
            alice.expect("<User Bob is offline.>")
            alice.send("chat Bob also secret")
            alice.expect("<Message to Bob stored until they log in.>")
        # The operator removes Bob (as python -m reactor.accounts remove does).
        store = SQLiteAccountStore(db)
        try:
            assert store.remove("Bob")
        finally:
            store.close()
        assert forget_stored_messages(db, "Bob")
        # A copy for the old Bob written after that (delivered messages are
        # written a moment later, off the chat thread) is gone too once the
        # name is registered anew.
        late = SQLiteHistory(history_path(db), HistoryConfig())
        late.record("Bob", "Alice", "Bob", "written late", wall_clock_ms())
        late.close()
        register(server.port, "bob")  # someone else takes the name
        with log_in(server.port, "bob", PASSWORD) as newcomer:
            assert history(newcomer, "history Alice") == []
        with log_in(server.port, "Alice", PASSWORD) as alice:
            # Alice keeps her own copy.
            assert [line.text for line in history(alice, "history Bob")] == [
                "secret", "also secret"]


def test_without_history_nothing_is_kept_and_history_is_refused_plainly(
        backend: str, db: str) -> None:
    accounts = AccountsConfig(path=db, password_hash=FAST_HASH, backoff_first=0.0,
                              backoff_max=0.0)
    with running_server(backend, accounts=accounts) as server:
        register(server.port, "Bob")
        with log_in(server.port, "Alice") as alice:
            alice.send("chat Bob are you there")
            alice.expect("<User Bob is offline.>")
            alice.send("history everyone")
            alice.expect(INVALID.format(NO_HISTORY))
    assert not Path(db).with_suffix(".history.db").exists()
