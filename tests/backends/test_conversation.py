"""The original's conversation, byte for byte, on both backends."""

from __future__ import annotations

from tests.support import Clients, the_original_conversation


def test_the_original_conversation(clients: Clients) -> None:
    the_original_conversation(clients)
