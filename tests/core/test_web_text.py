"""The page's text rules (reactor/web/static/text.js) agree with the Python
they port: the protocol's escapes both ways, its event lines, and which
characters the terminal client shows as visible tokens.  Run in node, on
the same hostile strings as the Python side."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cli.present import _cells
from protocol.arguments import quote, read_text
from protocol.escaping import escape
from protocol.events import (
    BroadcastFrom,
    Event,
    MessageFrom,
    MessageSent,
    NotDelivered,
    OnlineUsers,
    PasswordRequired,
    UserOffline,
    UserOnline,
    format_event,
)

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")
PROBE = Path(__file__).with_name("web_text_probe.mjs")

HOSTILE = [
    "plain text",
    '<img src=x onerror="alert(1)">',
    "\x1b[2J\x1b[31mred",
    "right-to-left \u202eevil\u202c end",
    "zero\u200bwidth and B\u200bob",
    "family 👩\u200d👩\u200d👧 joined",
    "tab\there and a\\backslash and \"quotes\"",
    "hangul\u3164filler",
    "zalgo a" + "\u0301" * 12,
    "bell \x07 del \x7f c1 \x85 ls \u2028 ps \u2029",
    "tag \U000e0041 private \ue000 bom \ufeff",
    "C:\\dir \\q stays",
]


def run_probe(cases: dict[str, list[str]]) -> dict[str, Any]:
    assert NODE is not None
    result = subprocess.run([NODE, str(PROBE)], input=json.dumps(cases), capture_output=True,
                            text=True, timeout=60, check=True)
    return json.loads(result.stdout)


def expected_parts(text: str) -> list[list[Any]]:
    """cli/present.py's cells, merged into runs as the page makes them."""
    parts: list[list[Any]] = []
    for cell in _cells([("", text)]):
        token = cell.style == "class:escape"
        shown = {"tab": "\t", "newline": "\n"}.get(cell.kind, cell.text)
        if parts and not token and not parts[-1][1]:
            parts[-1][0] += shown
        else:
            parts.append([shown, token])
    return parts


def test_the_page_reads_the_servers_escapes_back_to_what_was_typed() -> None:
    wire = [escape(text) for text in HOSTILE] + [escape(t, quoted=False) for t in HOSTILE]
    assert run_probe({"unescape": wire, "quote": [], "visible": [], "events": []})[
        "unescape"] == HOSTILE + HOSTILE


def test_what_the_page_sends_the_server_reads_as_typed() -> None:
    quoted = run_probe({"unescape": [], "quote": HOSTILE, "visible": [], "events": []})["quote"]
    assert [read_text(line, "message") for line in quoted] == HOSTILE
    # and what needs no escape is written as the Python client writes it
    assert quoted[0] == quote(HOSTILE[0])


def test_harmful_characters_are_shown_as_the_terminal_client_shows_them() -> None:
    shown = run_probe({"unescape": [], "quote": [], "visible": HOSTILE, "events": []})["visible"]
    assert shown == [expected_parts(text) for text in HOSTILE]


def test_the_page_reads_every_event_line_the_server_writes() -> None:
    events: list[Event] = [UserOnline("Ann"), UserOffline("Bob"), MessageFrom("Ann", HOSTILE[2]),
              BroadcastFrom("Ann", HOSTILE[3]), MessageSent("Bob", HOSTILE[6]),
              NotDelivered("Bob", "the recipient is not reading"), OnlineUsers(("Ann", "Bob")),
              PasswordRequired("Ann")]
    lines = [format_event(event).decode().rstrip("\n") for event in events]
    got = run_probe({"unescape": [], "quote": [], "visible": [], "events": lines})["events"]
    assert [e["kind"] for e in got] == ["online", "offline", "messageFrom", "broadcastFrom",
                                       "messageSent", "notDelivered", "onlineUsers",
                                       "passwordRequired"]
    assert got[2]["from"] == "Ann" and got[2]["text"] == HOSTILE[2]
    assert got[3]["text"] == HOSTILE[3]
    assert got[4]["to"] == "Bob" and got[4]["text"] == HOSTILE[6]
    assert got[5]["reason"] == "the recipient is not reading"
    assert got[6]["names"] == ["Ann", "Bob"]
