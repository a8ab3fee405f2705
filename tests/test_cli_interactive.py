"""The interactive client, driven through a real pseudo-terminal and read off a pyte screen.

Each test types as a person would and asserts on what a person would see:
the line under the cursor, the lines above it, the exit status.  Tests with
a real server run on both backends.
"""

from __future__ import annotations

import signal

import pytest

from reactor.backends.base import Server
from tests.cli_support import FakeServer, terminal
from tests.support import Clients

UP = "\x1b[A"
CTRL_C = "\x03"
CTRL_D = "\x04"
CTRL_U = "\x15"
TAB = "\t"
PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"


def test_a_half_typed_line_survives_an_incoming_message(server: Server,
                                                         clients: Clients) -> None:
    bob = clients.login("Bob")
    with terminal(server.port) as alice:
        alice.type('chat Bob "hal')
        alice.wait_for_input_line('> chat Bob "hal')

        bob.send('chat Alice "are you there?"')
        message = '<Message from Bob: "are you there?">'
        # Once the screen has settled, the message is above the prompt and
        # the prompt still holds the half-typed line, cursor at its end.
        half_typed = '> chat Bob "hal'
        alice.wait_for(lambda: message in alice.lines and alice.cursor_line == half_typed
                       and alice.screen.cursor.x == len(half_typed),
                       "the message above the half-typed line")
        assert alice.lines.index(message) < alice.screen.cursor.y

        alice.enter('lo"')
        assert bob.read_until(lambda line: "Message" in line)[-1] == (
            '<Message from Alice: "hallo">'
        )
        alice.wait_for_text("<To Bob> hallo")


def test_up_arrow_recalls_the_previous_command(server: Server, clients: Clients) -> None:
    bob = clients.login("Bob")
    with terminal(server.port) as alice:
        alice.enter('chat Bob "once"')
        alice.wait_for_text("<To Bob> once")
        alice.type(UP)
        alice.wait_for_input_line('> chat Bob "once"')
        alice.type(f"{CTRL_U}chat Bob \"twice\"\r")
        alice.wait_for_text("<To Bob> twice")
        alice.type(UP + UP)
        alice.wait_for_input_line('> chat Bob "once"')
        alice.type("\r")
        seen = bob.read_until(lambda line: line.endswith('"twice">'))
        seen += bob.read_until(lambda line: line.endswith('"once">'))
        assert [line for line in seen if "Message" in line] == [
            '<Message from Alice: "once">',
            '<Message from Alice: "twice">',
            '<Message from Alice: "once">',
        ]


def test_tab_completes_command_names_and_online_users(server: Server,
                                                      clients: Clients) -> None:
    clients.login("Bob")
    with terminal(server.port) as alice:
        alice.wait_for_text("<Online users: Alice, Bob>")
        alice.type(f"ch{TAB}")
        alice.wait_for_input_line("> chat")
        alice.type(f"b{TAB}")
        alice.wait_for_input_line("> chat Bob")
        alice.enter("hi")
        alice.wait_for_text("<To Bob> hi")

        # A user who arrives later is learnt from the online notice.
        clients.login("Carol")
        alice.wait_for_text("<User Carol is online.>")
        alice.type(f"chat c{TAB}")
        alice.wait_for_input_line("> chat Carol")


@pytest.mark.parametrize("leave", ["bye", "ctrl-d", "ctrl-c", "sigterm"])
def test_bye_ctrl_d_ctrl_c_and_sigterm_log_out_and_exit_0(server: Server, clients: Clients,
                                                          leave: str) -> None:
    bob = clients.login("Bob")
    with terminal(server.port) as alice:
        bob.expect("<User Alice is online.>")
        if leave == "bye":
            alice.enter("bye")
        elif leave == "ctrl-d":
            alice.type(CTRL_D)
        elif leave == "sigterm":
            alice.child.kill(signal.SIGTERM)
        else:
            alice.type('chat Bob "never sent')
            alice.wait_for_input_line('> chat Bob "never sent')
            alice.type(CTRL_C)
        assert alice.wait_exit() == 0
        assert "<User Alice is offline.>" in alice.lines
    # Bob sees the logout, and nothing that was half typed.
    assert bob.read_line() == "<User Alice is offline.>"


def test_pasted_lines_are_sent_as_separate_commands(server: Server,
                                                     clients: Clients) -> None:
    bob = clients.login("Bob")
    with terminal(server.port) as alice:
        alice.type(f'{PASTE_START}chat Bob "one"\nchat Bob "two"{PASTE_END}')
        alice.type("\r")
        alice.wait_for_text("<To Bob> two")
    seen = bob.read_until(lambda line: line.endswith('"two">'))
    assert [line for line in seen if "Message" in line] == [
        '<Message from Alice: "one">',
        '<Message from Alice: "two">',
    ]


def test_a_typo_is_explained_and_not_sent(server: Server, clients: Clients) -> None:
    bob = clients.login("Bob")
    with terminal(server.port) as alice:
        alice.enter('chat Bob "no end')
        alice.wait_for_text('Not sent: unterminated quote. Type "help" for commands.')
        alice.enter('chat Bob "fixed"')
        alice.wait_for_text("<To Bob> fixed")
    assert bob.read_until(lambda line: "Message" in line)[-1] == (
        '<Message from Alice: "fixed">'
    )


def test_the_server_going_away_ends_the_session_with_status_1(server: Server) -> None:
    with terminal(server.port) as alice:
        alice.type('chat Bob "half')
        alice.wait_for_input_line('> chat Bob "half')
        server.stop()
        alice.wait_for_text("Disconnected from server.")
        assert alice.wait_exit() == 1
        assert "<Server is shutting down.>" in alice.lines


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
    with FakeServer(HOSTILE) as fake, terminal(fake.port) as alice:
        alice.wait_for_text("<User Mallory is online.>")
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
        # Nothing was executed: the title is unset, the line before the
        # clear-screen is still there, and none of the server's sequences
        # reached the terminal raw.
        assert alice.screen.title == ""
        assert lines[0] == "<User Alice is online.>"
        raw = bytes(alice.raw)
        for sequence in (b"\x1b]0;", b"pwned\x07", b"\x1b[2J", b"\x1b[31m", b"\x07",
                         b"\x9b", b"abc\rXYZ", b"\x08\x08space"):
            assert sequence not in raw
        alice.enter("bye")
        assert alice.wait_exit() == 0
    assert fake.received == ["Alice", "users", "bye"]
