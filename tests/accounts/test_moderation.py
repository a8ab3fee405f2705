"""Operators: kick, ban, unban, mute, unmute and bans, over real sockets on
every backend, and a server process restarted on the same accounts file
(two nodes of a cluster: tests/cluster/test_cluster_moderation.py).

The operator is a registered name marked with ``python -m reactor.accounts
op``.  Timed bans and mutes are short and waited out as conditions (a login
that is let in again, a message that is delivered again), never slept.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from protocol import Ban, Mute, RemoteProtocolError, duration_seconds, parse_command
from reactor.accounts.moderation import LISTED, remaining
from reactor.accounts.store import Sanction
from reactor.app import open_store
from reactor.chat import NO_OPERATORS
from tests.accounts.test_accounts import (
    FAST_HASH,
    INVALID,
    PASSWORD,
    accounts_server,
    db,  # noqa: F401  (a fixture)
    log_in,
    operator,
    register,
)
from tests.cli_support import cli_args, run_cli
from tests.faults import server_process
from tests.support import LineClient, running_server, wait_until

REFUSED = INVALID.format(
    "only operators may {}; operators are named by the server's administrator")


def make_operator(store_url: str, name: str = "Op") -> None:
    store = open_store(store_url)
    try:
        assert store.set_operator(name, True)
    finally:
        store.close()


def op_online(port: int) -> LineClient:
    return log_in(port, "Op", PASSWORD)


def moderation(client: LineClient, command: str) -> str:
    """Send an operator's command; its confirmation line (other lines skipped)."""
    client.send(command)
    return client.read_until(lambda line: line.startswith(("<Moderation:", "<Invalid")))[-1]


def login_refused(port: int, name: str, source: str | None = None) -> str | None:
    """The line that refuses ``name``'s login, or None if it was let in (then it leaves)."""
    with LineClient(port, source=source) as client:
        client.send(name)
        line = client.read_line()
        if line == f"<User {name} is online.>":
            client.send("bye")
            client.read_until(lambda seen: seen == f"<User {name} is offline.>")
            return None
        client.expect_closed()
        return line


@pytest.fixture
def chat(backend: str, db: str) -> Iterator[tuple[int, str]]:  # noqa: F811
    """A server with accounts, and a registered operator Op: (port, db)."""
    with accounts_server(backend, db) as server:
        register(server.port, "Op")
        make_operator(db)
        yield server.port, db


def test_a_kicked_user_is_disconnected_with_the_reason_and_may_come_back(
    chat: tuple[int, str],
) -> None:
    port, _ = chat
    with log_in(port, "Bob") as bob, op_online(port) as op:
        assert moderation(op, 'kick Bob "stop flooding"') == '<Moderation: "Bob kicked">'
        bob.read_until(lambda line: line == '<Kicked by Op: "stop flooding">')
        bob.expect_closed()
    assert login_refused(port, "Bob") is None


def test_a_banned_name_is_disconnected_and_kept_out_until_unbanned(
    chat: tuple[int, str],
) -> None:
    port, _ = chat
    with log_in(port, "Bob") as bob, op_online(port) as op:
        confirmation = moderation(op, "ban bob spam")
        assert confirmation == '<Moderation: "bob banned until unbanned; disconnected">'
        bob.read_until(lambda line: line == '<Banned by Op: "spam">')
        bob.expect_closed()
        assert login_refused(port, "BOB") == '<Banned by Op: "spam">'
        listing = moderation(op, "bans")
        assert listing == '<Moderation: "ban bob by Op until lifted: spam">'
        assert moderation(op, "unban Bob") == '<Moderation: "Bob unbanned">'
        assert login_refused(port, "Bob") is None
        assert moderation(op, "unban Bob") == '<Moderation: "Bob was not banned">'


def test_the_list_of_bans_stays_one_short_line_however_many_there_are(
    chat: tuple[int, str],
) -> None:
    port, db_path = chat
    store = open_store(db_path)
    try:
        for number in range(LISTED + 5):
            store.add_sanction(Sanction("ban", f"user{number:02}", f"User{number:02}", "Op",
                                        "x" * 500, time.time(), None))
    finally:
        store.close()
    with op_online(port) as op:
        listing = moderation(op, "bans")
    assert listing.count("ban User") == LISTED and listing.endswith('; and 5 more">')
    assert len(listing) < LISTED * 200


def held_unless_run_out(held: bool, seconds: float, since: float) -> None:
    """A sanction of ``seconds``, given just after ``since`` (time.monotonic()),
    is ``held`` or not when a check ends: not holding is right only once it
    may have run out (on a busy machine the check may come that late)."""
    assert held or time.monotonic() - since >= seconds, "let through before its time"


def test_a_timed_ban_ends_by_itself(chat: tuple[int, str]) -> None:
    port, _ = chat
    with op_online(port) as op:
        given = time.monotonic()
        moderation(op, "ban Bob 2s")
        refusal = login_refused(port, "Bob")
        held_unless_run_out(refusal is not None, 2, given)
        if refusal is not None:
            # What is left of it, rounded up: 1s once the login took a second.
            assert refusal in ("<Banned by Op for 2s.>", "<Banned by Op for 1s.>")
    wait_until(lambda: login_refused(port, "Bob") is None, timeout=10)


def test_a_banned_address_keeps_out_every_name_from_it(chat: tuple[int, str]) -> None:
    port, _ = chat
    with log_in_from(port, "Bob", "127.0.0.2") as bob, op_online(port) as op:
        # 90m still reads 90m a few seconds later (what is left is rounded
        # up to the minute), whatever else the machine is doing meanwhile.
        moderation(op, 'ban 127.0.0.2 90m "bots"')
        bob.read_until(lambda line: line == '<Banned by Op for 90m: "bots">')
        bob.expect_closed()
        assert login_refused(port, "Carol", source="127.0.0.2") == \
            '<Banned by Op for 90m: "bots">'
        assert login_refused(port, "Carol") is None  # from another address
        moderation(op, "unban 127.0.0.2")
    assert login_refused(port, "Carol", source="127.0.0.2") is None


def log_in_from(port: int, name: str, source: str) -> LineClient:
    client = LineClient(port, source=source)
    client.send(name)
    client.expect(f"<User {name} is online.>")
    return client


def test_a_muted_user_is_told_each_message_was_not_sent_until_unmuted(
    chat: tuple[int, str],
) -> None:
    port, _ = chat
    with log_in(port, "Bob") as bob, op_online(port) as op:
        assert moderation(op, "mute Bob") == '<Moderation: "Bob muted until unmuted">'
        bob.read_until(lambda line: line == "<Muted by Op.>")
        bob.send('chat Op "hello"')
        bob.expect("<You are muted: your message was not sent.>")
        bob.send('broadcast "hello all"')
        bob.expect("<You are muted: your message was not sent.>")
        bob.send("users")  # everything else still works
        bob.read_until(lambda line: line.startswith("<Online users:"))
        assert moderation(op, "unmute Bob") == '<Moderation: "Bob unmuted">'
        bob.read_until(lambda line: line == "<Unmuted by Op.>")
        bob.send('chat Op "hello again"')
        bob.expect("<To Op> hello again")
        op.read_until(lambda line: line == '<Message from Bob: "hello again">')


def test_a_mute_lasts_across_a_new_login_and_ends_by_itself(chat: tuple[int, str]) -> None:
    port, _ = chat
    with op_online(port) as op:
        given = time.monotonic()
        moderation(op, "mute Bob 3s")
        with log_in(port, "Bob") as bob:
            bob.send('broadcast "hi"')
            answer = bob.read_line()
            held_unless_run_out(answer == "<You are muted: your message was not sent.>",
                                3, given)
            if answer != "<You are muted: your message was not sent.>":
                assert answer == "<To everyone> hi"

            def delivered() -> bool:
                bob.send('broadcast "hi"')
                return bob.read_line() == "<To everyone> hi"

            wait_until(delivered, timeout=10)


def test_a_user_who_is_not_an_operator_is_refused(chat: tuple[int, str]) -> None:
    port, _ = chat
    with log_in(port, "Bob") as bob, log_in(port, "Eve") as eve:
        for command, word in (("kick Bob", "kick"), ("ban Bob", "ban"), ("unban Bob", "unban"),
                              ("mute Bob", "mute"), ("unmute Bob", "unmute"), ("bans", "bans")):
            assert moderation(eve, command) == REFUSED.format(word)
        bob.send("users")
        assert bob.read_until(lambda line: line.startswith("<Online")) [-1] == \
            "<Online users: Bob, Eve>"


def test_without_accounts_there_are_no_operators(backend: str) -> None:
    with running_server(backend) as server, LineClient(server.port) as client:
        client.send("Op")
        client.expect("<User Op is online.>")
        client.send("kick Op")
        client.expect(INVALID.format(NO_OPERATORS))


def test_the_operator_command_line_makes_and_unmakes_operators(db: str) -> None:  # noqa: F811
    with accounts_server("select", db) as server:  # (the store is the point, not the backend)
        register(server.port, "Op")
        assert operator(db, "op", "nobody").returncode == 1
        made = operator(db, "op", "Op")
        assert made.returncode == 0 and "Op is now an operator" in made.stdout
        assert "\toperator" in operator(db, "list").stdout
        with op_online(server.port) as op:
            assert moderation(op, "bans") == '<Moderation: "no bans or mutes">'
            assert operator(db, "deop", "Op").returncode == 0
            assert moderation(op, "bans") == REFUSED.format("bans")


@pytest.mark.slow
def test_bans_survive_a_restart_on_the_same_accounts_file(
    backend: str, db: str,  # noqa: F811
) -> None:
    args = ("--accounts", db, "--password-hash", FAST_HASH)
    with server_process(backend, *args) as server:
        register(server.port, "Op")
        make_operator(db)
        with op_online(server.port) as op:
            moderation(op, 'ban Bob "for good"')
        assert server.terminate() == 0
    with server_process(backend, *args) as server:
        assert login_refused(server.port, "Bob") == '<Banned by Op: "for good">'
        assert server.terminate() == 0


def test_the_client_says_why_a_banned_login_is_refused(chat: tuple[int, str]) -> None:
    port, _ = chat
    with op_online(port) as op:
        moderation(op, 'ban Bob 90m "spam"')  # (90m: as above, whatever the delay)
    result = run_cli(cli_args(port, "Bob"))
    assert result.returncode == 1
    assert result.stderr.decode().strip() == \
        "reactor-chat: cannot log in as Bob: banned by Op for 90m: spam"


# -- the rules without sockets ----------------------------------------------------------------


def test_a_duration_is_a_number_and_one_unit_and_is_refused_otherwise() -> None:
    assert parse_command("mute Bob 90s") == Mute("Bob", "90s")
    assert duration_seconds("7d") == 7 * 86400
    for wrong in ("0m", "010m", "3651d"):
        with pytest.raises(RemoteProtocolError):
            parse_command(f"mute Bob {wrong}")
    # In ban, a word that is not a duration starts the reason.
    assert parse_command("ban Bob 10 minutes please") == Ban("Bob", None, "10 minutes please")


def test_what_is_left_of_a_ban_is_rounded_up_to_its_unit() -> None:
    assert remaining(None, 0) is None
    assert remaining(30.2, 0) == "31s"
    assert remaining(120, 0) == "2m"
    assert remaining(7200, 1) == "2h"
    assert remaining(3600, 1) == "1h"
    assert remaining(3660, 1) == "61m"
    assert remaining(86400 * 3, 0) == "3d"
