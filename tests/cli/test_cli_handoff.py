"""The piped client's hand-off between its threads: bounded, server lines first, never stuck on sends.

Plain values and real threads, no sockets: the properties that keep the
client's memory bounded and the main thread moving.
"""

from __future__ import annotations

import threading

from cli.handoff import Closed, Handoff
from tests.cli_support import TIMEOUT

BUDGET = 1000


def test_server_lines_are_taken_before_input_lines() -> None:
    handoff: Handoff[str] = Handoff(BUDGET)
    handoff.put_input(["typed 1", "typed 2"], 20)
    handoff.put_server(["from the server"], 20)
    assert [handoff.take(0) for _ in range(4)] == [
        "from the server", "typed 1", "typed 2", None]


def test_a_reader_over_budget_waits_for_the_main_thread_so_little_is_ever_queued() -> None:
    handoff: Handoff[int] = Handoff(BUDGET)
    batches, put = 50, [0]

    def flood() -> None:
        for batch in range(batches):
            handoff.put_server([batch], BUDGET)  # each read alone fills the budget
            put[0] += 1

    reader = threading.Thread(target=flood, daemon=True)
    reader.start()
    for taken in range(batches):
        assert handoff.take(TIMEOUT) == taken
        # The one batch queued, and at most one more let in once it was taken.
        assert put[0] <= taken + 2
    reader.join(TIMEOUT)
    assert not reader.is_alive()


def test_while_sends_back_up_no_input_is_taken_but_server_lines_still_are() -> None:
    handoff: Handoff[str] = Handoff(BUDGET)
    handoff.send(b"x" * BUDGET)  # the server is not reading our commands
    handoff.put_input(["typed"], 10)
    handoff.put_server(["from the server"], 10)
    assert handoff.take(0) == "from the server"
    assert handoff.take(0) is None
    assert handoff.outgoing() == b"x" * BUDGET  # the sender takes them: room again
    assert handoff.take(0) == "typed"


def test_the_logout_takes_server_lines_only() -> None:
    handoff: Handoff[str] = Handoff(BUDGET)
    handoff.put_input(["typed after bye"], 10)
    assert handoff.take(0, with_input=False) is None
    handoff.put_server(["<User Alice is offline.>"], 10)
    assert handoff.take(0, with_input=False) == "<User Alice is offline.>"


def test_closing_releases_every_waiting_thread() -> None:
    handoff: Handoff[str] = Handoff(BUDGET)
    handoff.put_server(["fills the budget"], BUDGET)
    outcomes: list[str] = []

    def reader() -> None:
        handoff.put_server(["waits"], 10)
        outcomes.append("reader released")

    def sender() -> None:
        try:
            handoff.outgoing()
        except Closed:
            outcomes.append("sender released")

    threads = [threading.Thread(target=reader, daemon=True),
               threading.Thread(target=sender, daemon=True)]
    for thread in threads:
        thread.start()
    handoff.close()
    for thread in threads:
        thread.join(TIMEOUT)
    assert sorted(outcomes) == ["reader released", "sender released"]
