"""The interactive client when an operator removes its user: no silent way back.

A real server with accounts and an operator; the client in a pseudo-terminal.
After a kick the client says so and waits for ``/reconnect``; after a ban it
says why and exits, where after a plain drop it would reconnect by itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reactor import DEFAULT_BACKEND
from tests.accounts.test_accounts import accounts_server, register
from tests.accounts.test_moderation import make_operator, moderation, op_online
from tests.cli_support import terminal

# Slow: a client process in a pty, kicked and banned.
pytestmark = pytest.mark.slow


def test_a_kicked_client_comes_back_only_when_asked_and_a_banned_one_stops(
        tmp_path: Path) -> None:
    db = str(tmp_path / "accounts.db")
    with accounts_server(DEFAULT_BACKEND, db) as server:
        register(server.port, "Op")
        make_operator(db)
        with op_online(server.port) as op, terminal(server.port) as alice:
            alice.type("/msg Op a draft")
            assert moderation(op, 'kick Alice "cool off"') == '<Moderation: "Alice kicked">'
            alice.wait_for_text('Kicked by Op: "cool off"')
            alice.wait_for_text("-- kicked out by the server's operator: type /reconnect")
            alice.wait_for(lambda: "/reconnect to come back" in alice.lines[-1]
                           and alice.cursor_line == "Alice> /msg Op a draft",
                           "the bottom line saying how to come back, the draft kept")
            assert alice.count("reconnecting in") == 0
            alice.type("\x15")  # Ctrl-U: the draft goes, /reconnect is typed instead
            alice.enter("/reconnect")
            alice.wait_for_text("-- reconnected as Alice")
            op.read_until(lambda line: line == "<User Alice is online.>")

            moderation(op, 'ban Alice "enough"')
            assert alice.wait_exit() == 1
            assert alice.count("reactor-chat: disconnected: banned by Op: enough") == 1, \
                alice.dump()
