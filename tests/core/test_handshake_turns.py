"""Who may run a TLS handshake step, in memory (reactor.handshakes).

The socket tests (``test_tls.py``) show what users observe under a flood of
handshakes on every backend; these pin the rule itself: a few at a time, one
per address, the waiting addresses taking turns.
"""

from __future__ import annotations

from reactor.handshakes import HandshakeTurns


def test_at_most_the_limit_run_and_one_per_address() -> None:
    turns: HandshakeTurns[str] = HandshakeTurns(limit=2)
    assert turns.try_start("10.0.0.1")
    assert not turns.try_start("10.0.0.1")  # its address has a step running
    assert turns.try_start("10.0.0.2")
    assert not turns.try_start("10.0.0.3")  # two at a time
    turns.end_pass()
    assert turns.try_start("10.0.0.3")


def test_a_finished_step_hands_its_turn_to_the_next_address_in_line() -> None:
    turns: HandshakeTurns[str] = HandshakeTurns(limit=1)
    assert turns.try_start("attacker")
    for index in range(3):
        turns.wait("attacker", f"attack {index}")
    turns.wait("newcomer", "newcomer")
    # The flood's address and the newcomer's take turns: the newcomer waits
    # for one of the flood's steps, not for all of them.
    assert turns.finish("attacker") == "attack 0"
    assert turns.finish("attacker") == "newcomer"
    assert turns.finish("newcomer") == "attack 1"
    assert turns.finish("attacker") == "attack 2"
    assert turns.finish("attacker") is None
    assert not turns and not turns.busy


def test_a_waiter_whose_address_is_busy_waits_even_when_a_turn_is_free() -> None:
    turns: HandshakeTurns[str] = HandshakeTurns(limit=2)
    assert turns.try_start("a")
    turns.wait("a", "a's second")
    assert turns.next_waiter() is None  # a free turn, but not for that address
    turns.end_pass()
    assert turns.next_waiter() == "a's second"
    assert turns.busy == {"a"}
