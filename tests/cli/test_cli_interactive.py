"""The interactive client, driven through a real pseudo-terminal and read off a pyte screen.

Each test types as a person would and asserts on what a person would see:
the line under the cursor, the lines above it, their colours, the exit
status.  The client's behaviour does not depend on the server's backend, so
these run against one (select); the conversation tests cover both backends.
"""

from __future__ import annotations

import signal
import termios
from collections.abc import Iterator

import pytest

from reactor import DEFAULT_BACKEND
from reactor.backends.base import Server
from tests.cli_support import FakeServer, Terminal, cli_args, terminal
from tests.support import Clients, running_server

# Slow: the terminal client in a pseudo-terminal per test.
pytestmark = pytest.mark.slow

UP = "\x1b[A"
CTRL_C = "\x03"
CTRL_D = "\x04"
CTRL_U = "\x15"
TAB = "\t"
PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"


@pytest.fixture
def server() -> Iterator[Server]:
    with running_server(DEFAULT_BACKEND) as running:
        yield running


def test_a_half_typed_line_survives_an_incoming_message(server: Server,
                                                         clients: Clients) -> None:
    bob = clients.login("Bob")
    with terminal(server.port) as alice:
        alice.type("/msg Bob hal")
        alice.wait_for_input_line("Alice> /msg Bob hal")

        bob.send('chat Alice "are you there?"')
        message = "Bob → you: are you there?"
        # Once the screen has settled, the message is above the prompt and
        # the prompt still holds the half-typed line, cursor at its end.
        half_typed = "Alice> /msg Bob hal"
        alice.wait_for(lambda: message in alice.lines and alice.cursor_line == half_typed
                       and alice.screen.cursor.x == len(half_typed),
                       "the message above the half-typed line")
        assert alice.lines.index(message) < alice.screen.cursor.y

        alice.enter("lo")
        assert bob.read_until(lambda line: "Message" in line)[-1] == (
            '<Message from Alice: "hallo">'
        )
        alice.wait_for_text("✓ you → Bob: hallo")


def test_what_was_typed_is_what_is_shown_and_sent(server: Server, clients: Clients) -> None:
    bob = clients.login("Bob")
    with terminal(server.port) as alice:
        alice.enter(r'chat Bob "path C:\temp and a \"quote\""')
        alice.wait_for_text('✓ you → Bob: path C:\\temp and a "quote"')
        bob.send(r'chat Alice "back: C:\\temp \"q\""')
        alice.wait_for_text('Bob → you: back: C:\\temp "q"')
    assert bob.read_until(lambda line: "Message" in line)[-1] == (
        r'<Message from Alice: "path C:\\temp and a \"quote\"">'
    )


def test_up_arrow_recalls_the_previous_command(server: Server, clients: Clients) -> None:
    bob = clients.login("Bob")
    with terminal(server.port) as alice:
        alice.enter("/msg Bob once")
        alice.wait_for_text("✓ you → Bob: once")
        alice.type(UP)
        alice.wait_for_input_line("Alice> /msg Bob once")
        alice.type(f"{CTRL_U}/msg Bob twice\r")
        alice.wait_for_text("✓ you → Bob: twice")
        alice.type(UP + UP)
        alice.wait_for_input_line("Alice> /msg Bob once")
        alice.type("\r")
        seen = bob.read_until(lambda line: line.endswith('"twice">'))
        seen += bob.read_until(lambda line: line.endswith('"once">'))
        assert [line for line in seen if "Message" in line] == [
            '<Message from Alice: "once">',
            '<Message from Alice: "twice">',
            '<Message from Alice: "once">',
        ]


def test_tab_completes_commands_and_names_and_does_nothing_inside_a_message(
        server: Server, clients: Clients) -> None:
    bob = clients.login("Bob")
    with terminal(server.port) as alice:
        alice.wait_for_text("-- online (2): Alice, Bob")
        alice.type(f"ch{TAB}")
        alice.wait_for_input_line("Alice> chat")
        alice.type(f"b{TAB}")
        alice.wait_for_input_line("Alice> chat Bob")
        alice.type(f"hi{TAB}there")
        alice.wait_for_input_line("Alice> chat Bob hithere")
        alice.type(CTRL_U + f"/ms{TAB}")
        alice.wait_for_input_line("Alice> /msg")
        # A user who arrives later is learnt from the online notice.
        clients.login("Carol")
        alice.wait_for_text("-- Carol is online")
        alice.type(f"c{TAB}")
        alice.wait_for_input_line("Alice> /msg Carol")
    bob.expect("<User Alice is online.>")


@pytest.mark.parametrize("leave", ["bye", "/quit", "ctrl-d", "ctrl-c", "sigterm"])
def test_bye_quit_ctrl_d_ctrl_c_and_sigterm_log_out_and_exit_0(
        server: Server, clients: Clients, leave: str) -> None:
    bob = clients.login("Bob")
    with terminal(server.port) as alice:
        bob.expect("<User Alice is online.>")
        if leave in ("bye", "/quit"):
            alice.enter(leave)
        elif leave == "ctrl-d":
            alice.type(CTRL_D)
        elif leave == "sigterm":
            alice.child.kill(signal.SIGTERM)
        else:
            alice.type(CTRL_C)
        assert alice.wait_exit() == 0
        assert "-- logged out" in alice.lines
    assert bob.read_line() == "<User Alice is offline.>"


def test_ctrl_c_clears_a_half_typed_line_and_only_logs_out_on_an_empty_one(
        server: Server, clients: Clients) -> None:
    bob = clients.login("Bob")
    with terminal(server.port) as alice:
        bob.expect("<User Alice is online.>")
        alice.type("/msg Bob never sent")
        alice.wait_for_input_line("Alice> /msg Bob never sent")
        alice.type(CTRL_C)
        alice.wait_for_input_line("Alice>")
        alice.enter("/msg Bob still here")
        alice.wait_for_text("✓ you → Bob: still here")
        alice.type(CTRL_C)
        assert alice.wait_exit() == 0
    assert bob.read_line() == '<Message from Alice: "still here">'
    assert bob.read_line() == "<User Alice is offline.>"


def test_a_multi_line_paste_is_one_message(server: Server, clients: Clients) -> None:
    bob = clients.login("Bob")
    with terminal(server.port) as alice:
        alice.type(f"{PASTE_START}/msg Bob one\n\ttwo{PASTE_END}")
        alice.type("\r")
        alice.wait_for_text("✓ you → Bob: one")
        row = next(i for i, line in enumerate(alice.lines) if line == "✓ you → Bob: one")
        assert alice.lines[row + 1] == "        two"  # hanging indent 4, tab to column 4
    assert bob.read_until(lambda line: "Message" in line)[-1] == (
        r'<Message from Alice: "one\x0a\x09two">'
    )


def test_a_typo_names_what_was_typed_and_suggests_a_command(server: Server) -> None:
    with terminal(server.port) as alice:
        alice.enter("msg Bob hi")
        alice.wait_for_text('✗ not sent: "msg" is not a command; did you mean /msg?')
        alice.enter('chat Bob "no end')
        alice.wait_for_text("✗ not sent: unterminated quote")
        alice.enter("/msg Bob " + "x" * 5000)
        alice.wait_for_text("✗ not sent: the message is 915 characters too long (the")


def test_query_mode_sends_plain_lines_to_one_user(server: Server, clients: Clients) -> None:
    bob = clients.login("Bob")
    with terminal(server.port) as alice:
        alice.enter("/query Bob")
        alice.wait_for_input_line("Alice→Bob>")
        alice.enter("users are plain text here")
        alice.wait_for_text("✓ you → Bob: users are plain text here")
        alice.enter("/who")
        alice.wait_for_text("-- online (2): Alice, Bob", timeout=5)
        alice.enter("/query")
        alice.wait_for_input_line("Alice>")
        alice.enter("users")
    assert bob.read_until(lambda line: "Message" in line)[-1] == (
        '<Message from Alice: "users are plain text here">'
    )


# -- display --------------------------------------------------------------------

SHOWCASE = (
    '<Message from Bob: "C:\\\\temp \\"q\\" esc\\x1b[31m zw\\u200bsp rtl\\u202eo'
    ' 中文 😀 tab\\x09end">\n'
    '<Broadcast from Carol: "to all">\n'
    "<User Dave is online.>\n"
)


def test_messages_are_shown_as_typed_with_only_harmful_characters_made_visible() -> None:
    with FakeServer(SHOWCASE.encode()) as fake, terminal(fake.port, logged_in=False) as alice:
        alice.wait_for_text("-- Dave is online")
        assert alice.has_line(
            'Bob → you: C:\\temp "q" esc\\x1b[31m zw<U+200B>sp rtl<U+202E>o'
            " 中文 😀 tab   end"  # the tab: spaces to the next multiple of 4
        ), alice.dump()
        assert alice.has_line("Carol → everyone: to all")
        # The stand-ins are drawn reversed; they are not what Bob typed.
        assert all(char.reverse for char in alice.styles_of("\\x1b"))
        assert all(char.reverse for char in alice.styles_of("<U+200B>"))
        assert not any(char.reverse for char in alice.styles_of("C:\\temp"))
        # DMs, broadcasts and presence each have their colour.
        colours = {alice.styles_of(text)[0].fg for text in ("Bob → you", "Carol →", "-- Dave")}
        assert len(colours) == 3


def test_no_colour_with_no_color() -> None:
    with FakeServer(SHOWCASE.encode()) as fake, \
            terminal(fake.port, logged_in=False, env={"NO_COLOR": "1"}) as alice:
        alice.wait_for_text("-- Dave is online")
        assert {char.fg for line in alice.screen.buffer.values()
                for char in line.values()} == {"default"}
        assert all(char.reverse for char in alice.styles_of("<U+200B>"))


def test_typed_ahead_keys_are_kept_and_shown_once() -> None:
    with FakeServer() as fake:
        term = Terminal(cli_args(fake.port, "Alice", "--timestamps", "off"))
        try:
            # As soon as the client has taken the terminal (echo off), and
            # long before its prompt is drawn, type.
            term.wait_for(lambda: not termios.tcgetattr(term.child.child_fd)[3] & termios.ECHO,
                          "echo to be turned off")
            assert b"Alice>" not in term.raw  # the prompt is not up yet
            term.type("early")
            term.wait_for(lambda: term.cursor_line == "Alice> early"
                          and term.has_line("-- logged in as Alice"),
                          "the typed keys in the input line after the login")
            assert term.count("early") == 1, term.dump()
            assert bytes(term.raw).count(b"early") >= 1
            assert not bytes(term.raw).startswith(b"early")
        finally:
            term.close()


# A server that sends what a terminal would execute: a title change (OSC 0),
# clear screen, a bare CR that would overwrite the line, backspaces, BEL, and
# CSI as a C1 character and as a raw byte -- raw and inside a fake event.
HOSTILE = (
    b"\x1b]0;pwned\x07title\n"
    b"\x1b[2Jcleared\n"
    b"abc\rXYZ\n"
    b"back\x08\x08space\n"
    b"bell\x07\n"
    b"c1 \xc2\x9b31m and raw \x9b\n"
    b'<Message from Bob: "\x1b[31mred">\n'
    b"<User Mallory is online.>\n"
)


def test_a_hostile_servers_escape_sequences_are_shown_not_executed() -> None:
    with FakeServer(HOSTILE) as fake, terminal(fake.port, logged_in=False) as alice:
        alice.wait_for_text("-- Mallory is online")
        lines = alice.lines
        for shown in (
            r"\x1b]0;pwned\x07title",
            r"\x1b[2Jcleared",
            r"abc\x0dXYZ",
            r"back\x08\x08space",
            r"bell\x07",
            r"c1 \x9b31m and raw \x9b",
            r'<Message from Bob: "\x1b[31mred">',
        ):
            assert shown in lines
        assert alice.screen.title == ""
        assert lines[0] == "-- logged in as Alice"
        raw = bytes(alice.raw)
        for sequence in (b"\x1b]0;", b"pwned\x07", b"\x1b[2J", b"\x1b[31m", b"\x07",
                         b"\x9b", b"abc\rXYZ", b"\x08\x08space"):
            assert sequence not in raw
        alice.enter("bye")
        assert alice.wait_exit() == 0
    assert fake.received == ["Alice", "users", "bye"]


@pytest.mark.parametrize("options", [(), ("--raw",), ("--timestamps", "HH:MM")])
def test_a_message_padded_to_wrap_onto_a_fake_event_never_starts_a_row(
        options: tuple[str, ...]) -> None:
    # The spoof: enough spaces that, on an 80-column terminal wrapping at the
    # edge, the fake event would start the next row.
    fakes = ["-- Admin is online", "<User Admin is online.>", "[12:00] -- Admin is online"]
    script = b"".join(
        f'<Message from Mallory: "hi{" " * pad}{fake}">\n'.encode()
        for fake in fakes for pad in range(40, 80, 3)
    ) + b"<User Dave is online.>\n"
    with FakeServer(script) as fake, \
            terminal(fake.port, "Alice", *options, logged_in=False) as alice:
        alice.wait_for_text("Dave is online")
        rows = [line for line in alice.lines if "Admin" in line]
        assert rows
        for row in rows:
            assert row.startswith(" ") or "Mallory" in row, alice.dump()


# -- delivery state ---------------------------------------------------------------


def test_a_message_is_pending_until_the_server_answers_then_delivered_or_not() -> None:
    # This server answers only when the test says so.
    with FakeServer(answer=lambda line: b"<Online users: Alice, Bob>\n"
                    if line == "users" else None) as fake, terminal(fake.port) as alice:
        alice.enter("/msg Bob first")
        alice.wait_for_text("… you → Bob: first  (sending)")
        fake.send(b"<To Bob> first\n")
        alice.wait_for_text("✓ you → Bob: first")
        alice.wait_for(lambda: alice.count("(sending)") == 0, "the pending row to go")

        alice.enter("/msg Bob second")
        alice.wait_for_text("… you → Bob: second  (sending)")
        # Bob's offline notice while the message to Bob is at the head of the
        # queue: the server's answer to it.
        fake.send(b"<User Bob is offline.>\n")
        alice.wait_for_text("✗ not delivered to Bob: Bob is offline. You wrote: second")

        alice.enter("/msg Bob third")
        alice.enter("broadcast fourth")
        alice.wait_for_text("… you → everyone: fourth  (sending)")
        fake.send(b"<User Carol is offline.>\n"  # presence: not an answer
                  b"<Message to Bob not delivered: the connection was closing.>\n"
                  b"<To everyone> fourth\n")
        alice.wait_for_text("✓ you → everyone: fourth")
        assert alice.has_line("-- Carol is offline")
        assert alice.has_line(
            "✗ not delivered to Bob: the connection was closing. You wrote: third")
        alice.wait_for(lambda: alice.count("(sending)") == 0, "no pending rows")


def test_history_persists_across_runs_when_asked(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "sub" / "history"
    with terminal(server.port, "Alice", f"--history-file={path}") as alice:
        alice.enter("/who")
        alice.wait_for(lambda: alice.count("-- online (1): Alice") == 2, "the second reply")
        alice.enter("/quit")
        assert alice.wait_exit() == 0
    assert "/who" in path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with terminal(server.port, "Alice", f"--history-file={path}") as alice:
        alice.type(UP)
        alice.wait_for_input_line("Alice> /quit")
        alice.type(UP)
        alice.wait_for_input_line("Alice> /who")


def test_a_direct_message_rings_the_bell_with_bell() -> None:
    script = b'<Broadcast from Carol: "no bell">\n<Message from Bob: "ding">\n'
    with FakeServer(script) as fake, \
            terminal(fake.port, "Alice", "--bell", logged_in=False) as alice:
        alice.wait_for(lambda: b"\x07" in alice.raw and alice.has_line("Bob → you: ding"),
                       "the bell and the message")
        raw = bytes(alice.raw)
        assert raw.count(b"\x07") == 1
        assert raw.index(b"no bell") < raw.index(b"\x07")


def test_a_message_without_an_answer_is_shown_as_overdue() -> None:
    from prompt_toolkit.application import create_app_session
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from cli.interactive import Client, Options
    from cli.outbox import ANSWER_TIMEOUT
    from cli.present import plain
    from protocol import Chat

    with create_pipe_input() as pipe, create_app_session(input=pipe, output=DummyOutput()):
        client = Client(Options("127.0.0.1", 1, "Alice", timestamps=None))
        fresh = client.outbox.sent(Chat("Bob", "hi"), 100.0)
        assert plain(client._pending_row(fresh, 100.0 + ANSWER_TIMEOUT - 0.1)) == (
            "… you → Bob: hi  (sending)")
        assert plain(client._pending_row(fresh, 100.0 + ANSWER_TIMEOUT)) == (
            "… you → Bob: hi  (no answer from the server after 8 s)")
        client.query = "Bob"
        assert plain(client._prompt()).endswith("… you → Bob: hi  (sending)\nAlice→Bob> ") or \
            plain(client._prompt()).endswith("(no answer from the server after 8 s)\nAlice→Bob> ")


def test_a_terminal_that_hangs_up_logs_out_and_the_client_exits(server: Server,
                                                                 clients: Clients) -> None:
    bob = clients.login("Bob")
    with terminal(server.port) as alice:
        bob.expect("<User Alice is online.>")
        # Closing the pty's master is the terminal window going away: the
        # client gets SIGHUP and then EIO on every write to the terminal.
        alice.child.close(force=False)
        assert bob.read_line() == "<User Alice is offline.>"
        assert not alice.child.isalive()


def test_a_first_connection_that_fails_ends_the_client_with_status_1() -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    with terminal(port, logged_in=False) as alice:
        assert alice.wait_exit() == 1
        assert any(line.startswith(f"reactor-chat: cannot connect to 127.0.0.1:{port}: "
                                   "connection refused") for line in alice.lines), alice.dump()


def test_the_password_prompt_takes_the_prompts_place_and_leaves_no_copy_of_it() -> None:
    with FakeServer(password="sesame") as fake, \
            terminal(fake.port, logged_in=False, env={"REACTOR_CHAT_PASSWORD": ""}) as alice:
        alice.wait_for_input_line("Password for Alice:")
        alice.enter("wrong")
        alice.wait_for_text("✗ wrong password for Alice")
        alice.wait_for_input_line("Password for Alice:")
        alice.enter("sesame")
        alice.wait_for_text("-- logged in as Alice")
        alice.wait_for_input_line("Alice>")
        above = alice.lines[:alice.screen.cursor.y]
        assert [line for line in above if line.startswith("Alice>")] == [], alice.dump()
        assert sum(line.startswith("Password for Alice:") for line in above) == 2
        alice.enter("/quit")
        assert alice.wait_exit() == 0
