"""The history stores: what the chat reads back from each, their retention and their bounds.

Every store keeps the :class:`~reactor.contracts.MessageStore` contract the
same way; the SQLite one also keeps it across a restart.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reactor.app import forget_stored_messages
from reactor.config import HistoryConfig
from reactor.contracts import MessageStore
from reactor.history.memory import MemoryHistory
from reactor.history.redis_store import LOST, RedisHistory
from reactor.history.sqlite import (
    ROWS_PER_INSERT,
    TRIM_EVERY,
    SQLiteHistory,
    _chunks,
    history_path,
)
from tests.cluster_support import (  # noqa: F401  (a fixture)
    RedisServer,
    redis_server,
    require_redis,
)

Opener = Callable[[HistoryConfig], MessageStore]
NOW = 1_796_624_263_000  # ms
DAY = 86_400_000


@pytest.fixture(params=["memory", "sqlite", "redis"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    opened: list[MessageStore] = []
    url = ""
    if request.param == "redis":
        require_redis()
        url = request.getfixturevalue("redis_server").url

    def open_one(config: HistoryConfig) -> MessageStore:
        store: MessageStore
        if request.param == "memory":
            store = MemoryHistory(config)
        elif request.param == "sqlite":
            store = SQLiteHistory(str(tmp_path / "chat.history.db"), config)
        else:
            store = RedisHistory(url, config)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


def texts(page: list) -> list[str]:  # type: ignore[type-arg]
    return [message.text for message in page]


def test_a_conversation_reads_back_oldest_first_in_any_case(open_store: Opener) -> None:
    store = open_store(HistoryConfig())
    store.record("Alice", "Alice", "Bob", "one", NOW)
    store.record("ALICE", "bob", "ALICE", "two", NOW + 1)
    store.record("Alice", "Alice", "Carol", "elsewhere", NOW + 2)
    store.record("Alice", "Alice", "everyone", "to all", NOW + 3)
    page = store.page("alice", "BOB", None, 10, NOW + 4)
    assert texts(page) == ["one", "two"]
    assert [(m.sender, m.to, m.time_ms) for m in page] == [
        ("Alice", "Bob", NOW), ("bob", "ALICE", NOW + 1)]
    assert texts(store.page("Carol", "everyone", None, 10, NOW + 4)) == ["to all"]


def test_each_owner_has_its_own_copy_of_a_conversation(open_store: Opener) -> None:
    store = open_store(HistoryConfig())
    store.record("Alice", "Alice", "Bob", "kept for Alice only", NOW)
    store.record("Bob", "Bob", "Alice", "kept for Bob only", NOW + 1)
    assert texts(store.page("Alice", "Bob", None, 10, NOW + 2)) == ["kept for Alice only"]
    assert texts(store.page("Bob", "Alice", None, 10, NOW + 2)) == ["kept for Bob only"]


def test_a_message_kept_for_both_parties_is_each_ones_own_copy(open_store: Opener) -> None:
    store = open_store(HistoryConfig())
    store.record_pair("Alice", "BOB", "for both", NOW)
    store.record("Alice", "Alice", "Bob", "for Alice only", NOW + 1)
    store.record_pair("bob", "alice", "the reply", NOW + 2)
    assert texts(store.page("Alice", "Bob", None, 10, NOW + 3)) == [
        "for both", "for Alice only", "the reply"]
    assert [(m.sender, m.to) for m in store.page("Bob", "Alice", None, 10, NOW + 3)] == [
        ("Alice", "BOB"), ("bob", "alice")]
    store.forget_conversations("Bob")  # Bob registered anew: Alice's copies stay hers
    assert store.page("Bob", "Alice", None, 10, NOW + 3) == []
    assert texts(store.page("Alice", "Bob", None, 10, NOW + 3)) == [
        "for both", "for Alice only", "the reply"]
    store.record_pair("Alice", "Bob", "to the new Bob", NOW + 4)
    assert texts(store.page("Bob", "Alice", None, 10, NOW + 5)) == ["to the new Bob"]
    store.forget("alice")
    assert store.page("Alice", "Bob", None, 10, NOW + 5) == []
    assert texts(store.page("Bob", "Alice", None, 10, NOW + 5)) == ["to the new Bob"]


def test_pages_go_backwards_from_a_message_id(open_store: Opener) -> None:
    store = open_store(HistoryConfig())
    for n in range(10):
        store.record("Alice", "Alice", "Bob", str(n), NOW + n)
    newest = store.page("Alice", "Bob", None, 4, NOW + 20)
    assert texts(newest) == ["6", "7", "8", "9"]
    earlier = store.page("Alice", "Bob", newest[0].id, 4, NOW + 20)
    assert texts(earlier) == ["2", "3", "4", "5"]
    assert texts(store.page("Alice", "Bob", earlier[0].id, 4, NOW + 20)) == ["0", "1"]
    assert store.page("Alice", "Bob", "1733552263123-0", 4, NOW + 20) == []
    assert texts(store.page("Alice", "Bob", "9" * 20, 2, NOW + 20)) == ["8", "9"]


def test_a_conversation_keeps_its_latest_count_and_nothing_older_than_the_age(
        open_store: Opener) -> None:
    store = open_store(HistoryConfig(direct_count=3, broadcast_count=5, max_age=2 * 86_400))
    for n in range(3 * TRIM_EVERY):
        store.record("Alice", "Alice", "Bob", str(n), NOW + n)
        store.record("Alice", "Alice", "everyone", str(n), NOW + n)
    last = 3 * TRIM_EVERY
    assert texts(store.page("Alice", "Bob", None, 100, NOW + 100)) == [
        str(n) for n in range(last - 3, last)]
    assert len(store.page("Alice", "everyone", None, 100, NOW + 100)) == 5
    # Three days later nothing of it is shown.
    assert store.page("Alice", "Bob", None, 100, NOW + 3 * DAY) == []
    assert store.page("Alice", "everyone", None, 100, NOW + 3 * DAY) == []


def take_waiting(store: MessageStore, to: str) -> list:  # type: ignore[type-arg]
    """What a login that delivers everything does: read, then acknowledge each."""
    waiting = store.waiting(to)
    for message in waiting:
        store.acknowledge(to, message.id)
    return waiting


def test_messages_wait_for_their_recipient_up_to_the_cap_and_are_taken_once(
        open_store: Opener) -> None:
    store = open_store(HistoryConfig(waiting_max=3))
    for n in range(3):
        assert store.hold("Alice", "Bob", f"m{n}", NOW + n) is not None
    assert store.hold("Carol", "BOB", "one too many", NOW + 5) is None
    assert store.hold("Alice", "Carol", "for Carol", NOW + 6) is not None
    taken = take_waiting(store, "bob")
    assert [(m.sender, m.text, m.time_ms) for m in taken] == [
        ("Alice", "m0", NOW), ("Alice", "m1", NOW + 1), ("Alice", "m2", NOW + 2)]
    assert store.waiting("Bob") == []
    assert texts(take_waiting(store, "Carol")) == ["for Carol"]


def test_a_waiting_message_is_held_until_it_is_acknowledged(open_store: Opener) -> None:
    store = open_store(HistoryConfig(waiting_max=3))
    for n in range(3):
        store.hold("Alice", "Bob", f"m{n}", NOW + n)
    first, second, _ = store.waiting("Bob")
    assert texts(store.waiting("BOB")) == ["m0", "m1", "m2"]  # reading lets nothing go
    store.acknowledge("Bob", second.id)
    store.acknowledge("Carol", first.id)  # not Carol's: nothing happens
    assert texts(store.waiting("Bob")) == ["m0", "m2"]
    store.acknowledge("bob", first.id)
    assert texts(store.waiting("Bob")) == ["m2"]
    assert store.hold("Alice", "Bob", "room again", NOW + 9) is not None


def test_a_logins_backlog_is_let_go_in_one_call(open_store: Opener) -> None:
    store = open_store(HistoryConfig())
    for n in range(4):
        store.hold("Alice", "Bob", f"m{n}", NOW + n)
    first, second, third, _ = store.waiting("Bob")
    store.acknowledge("Bob", first.id, third.id, second.id)
    store.acknowledge("Bob")  # nothing delivered: nothing let go
    assert texts(store.waiting("Bob")) == ["m3"]


def test_forgetting_a_name_removes_its_waiting_messages_and_its_own_conversations(
        open_store: Opener) -> None:
    store = open_store(HistoryConfig())
    store.record("Alice", "Alice", "Bob", "private", NOW)
    store.record("Alice", "Carol", "Alice", "also private", NOW)
    store.record("Bob", "Alice", "Bob", "Bob's copy", NOW)
    store.record("Bob", "Bob", "Carol", "not Alice's", NOW)
    store.record("Alice", "Alice", "everyone", "public", NOW)
    store.hold("Bob", "Alice", "waiting for Alice", NOW)
    store.hold("Alice", "Carol", "from Alice", NOW)
    store.hold("Bob", "Carol", "from Bob", NOW)
    store.forget("ALICE")
    assert store.page("Alice", "Bob", None, 100, NOW) == []
    assert store.page("alice", "Carol", None, 100, NOW) == []
    assert take_waiting(store, "Alice") == []
    assert texts(store.page("Bob", "Carol", None, 100, NOW)) == ["not Alice's"]
    assert texts(store.page("Bob", "Alice", None, 100, NOW)) == ["Bob's copy"]
    assert texts(store.page("Bob", "everyone", None, 100, NOW)) == ["public"]
    assert texts(take_waiting(store, "Carol")) == ["from Bob"]


def test_a_name_registered_anew_loses_only_its_own_copies(open_store: Opener) -> None:
    store = open_store(HistoryConfig())
    store.record("Bob", "Alice", "Bob", "for the old Bob", NOW)
    store.record("Alice", "Alice", "Bob", "Alice's copy", NOW)
    store.hold("Bob", "Carol", "Bob left it for Carol", NOW)
    store.forget_conversations("BOB")
    assert store.page("Bob", "Alice", None, 10, NOW) == []
    assert texts(store.page("Alice", "Bob", None, 10, NOW)) == ["Alice's copy"]
    assert texts(store.waiting("Carol")) == ["Bob left it for Carol"]


def test_a_name_with_like_wildcards_forgets_only_its_own(open_store: Opener) -> None:
    store = open_store(HistoryConfig())
    store.record("a_c", "a_c", "Bob", "a_c's", NOW)
    store.record("abc", "abc", "Bob", "abc's", NOW)
    store.forget("a_c")
    assert texts(store.page("abc", "Bob", None, 100, NOW)) == ["abc's"]


def test_the_memory_store_keeps_a_bounded_number_of_conversations() -> None:
    store = MemoryHistory(HistoryConfig(max_conversations=2))
    for name in ("Bob", "Carol", "Dave"):
        store.record("Alice", "Alice", name, f"to {name}", NOW)
    assert store.page("Alice", "Bob", None, 10, NOW) == []  # the least recently written
    assert texts(store.page("Alice", "Dave", None, 10, NOW)) == ["to Dave"]


def test_the_sqlite_store_keeps_history_and_waiting_messages_across_a_restart(
        tmp_path: Path) -> None:
    path = str(tmp_path / "chat.history.db")
    store = SQLiteHistory(path, HistoryConfig())
    store.record("Bob", "Alice", "Bob", "kept", NOW)
    store.hold("Alice", "Bob", "waits", NOW + 1)
    store.close()
    again = SQLiteHistory(path, HistoryConfig())
    try:
        assert texts(again.page("Bob", "Alice", None, 10, NOW + 2)) == ["kept"]
        assert texts(take_waiting(again, "Bob")) == ["waits"]
        again.record("Bob", "Alice", "Bob", "after", NOW + 3)
        kept, later = again.page("Bob", "Alice", None, 10, NOW + 4)
        assert int(later.id) > int(kept.id)
    finally:
        again.close()


def test_a_history_file_kept_a_row_per_owner_reads_back_the_same(tmp_path: Path) -> None:
    path = str(tmp_path / "chat.history.db")
    with sqlite3.connect(path) as old:
        old.executescript("""
            CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, conversation TEXT,
                time_ms INTEGER, sender TEXT, recipient TEXT, text TEXT);
            INSERT INTO messages (conversation, time_ms, sender, recipient, text) VALUES
                ('alice' || char(10) || 'bob', 1796624263000, 'Alice', 'Bob', 'mine'),
                ('bob' || char(10) || 'alice', 1796624263000, 'Alice', 'Bob', 'mine'),
                ('everyone', 1796624263001, 'Bob', 'everyone', 'to all'),
                ('bob' || char(10) || 'alice', 1796624263002, 'Bob', 'Alice', 'Bob''s only');
        """)
    old.close()
    store = SQLiteHistory(path, HistoryConfig())
    try:
        assert texts(store.page("Alice", "Bob", None, 10, NOW)) == ["mine"]
        assert texts(store.page("Bob", "Alice", None, 10, NOW)) == ["mine", "Bob's only"]
        assert texts(store.page("Carol", "everyone", None, 10, NOW)) == ["to all"]
    finally:
        store.close()


def test_a_sqlite_batch_that_failed_leaves_the_next_ones_readable(tmp_path: Path) -> None:
    store = SQLiteHistory(str(tmp_path / "chat.history.db"), HistoryConfig())
    try:
        with pytest.raises(sqlite3.Error):  # a value SQLite cannot take: rolled back
            store._write([(None, "Alice", "Bob", object(), NOW)])  # type: ignore[list-item]
        store.record_pair("Alice", "Bob", "after", NOW + 1)
        assert texts(store.page("Bob", "Alice", None, 10, NOW + 2)) == ["after"]
    finally:
        store.close()


def test_removing_an_account_forgets_it_in_the_history_file_beside_it(tmp_path: Path) -> None:
    accounts = str(tmp_path / "chat.db")
    assert history_path(accounts) == str(tmp_path / "chat.history.db")
    assert not forget_stored_messages(accounts, "Alice")  # no file: none is made
    assert not Path(history_path(accounts)).exists()
    store = SQLiteHistory(history_path(accounts), HistoryConfig())
    store.hold("Bob", "Alice", "for Alice", NOW)
    assert forget_stored_messages(accounts, "alice")
    assert take_waiting(store, "Alice") == []
    store.close()


def test_the_configuration_picks_the_store(tmp_path: Path) -> None:
    from reactor.app import open_history
    from reactor.config import AccountsConfig, ClusterConfig, ServerConfig

    assert open_history(ServerConfig()) is None
    in_memory = open_history(ServerConfig(history=HistoryConfig()))
    assert isinstance(in_memory, MemoryHistory)
    accounts = AccountsConfig(path=str(tmp_path / "chat.db"))
    on_disk = open_history(ServerConfig(history=HistoryConfig(), accounts=accounts))
    assert isinstance(on_disk, SQLiteHistory)
    on_disk.close()
    assert Path(history_path(accounts.path)).exists()
    on_a_cluster = open_history(ServerConfig(history=HistoryConfig(), accounts=accounts,
                                             cluster=ClusterConfig(url="redis://127.0.0.1:1")))
    assert isinstance(on_a_cluster, RedisHistory) and on_a_cluster.url == "redis://127.0.0.1:1"
    on_a_cluster.close()


def test_history_on_a_cluster_is_kept_in_its_redis() -> None:
    from reactor.options import parse_args

    args = parse_args(["--history", "on", "--cluster", "redis://127.0.0.1:1"], {})
    assert args.history and args.cluster == "redis://127.0.0.1:1"


def test_waiting_messages_lost_by_redis_are_logged_not_passed_over_in_silence(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    require_redis()
    with caplog.at_level(logging.WARNING, logger="reactor"):
        store = RedisHistory(redis_server.url, HistoryConfig())
    assert [record.getMessage() for record in caplog.records] == [
        f"History store {redis_server.url}: none kept before (new, or Redis lost it)"]
    caplog.clear()
    try:
        store.hold("Alice", "Bob", "waits", NOW)
        redis_server.flush()  # as a restart without persistence leaves it
        with caplog.at_level(logging.ERROR, logger="reactor"):
            assert store.waiting("Bob") == []
            assert store.waiting("Bob") == []  # said once: the store is marked again
        assert [record.getMessage() for record in caplog.records] == [LOST]
    finally:
        store.close()


def test_a_batch_of_any_size_is_inserted_in_a_few_statement_shapes() -> None:
    counts = {n: _chunks(n) for n in range(1, 5000)}
    assert all(sum(rows) == n for n, rows in counts.items())
    assert len({rows for chunks in counts.values() for rows in chunks}) <= 24
    assert max(len(rows) for n, rows in counts.items() if n <= ROWS_PER_INSERT) <= 2
