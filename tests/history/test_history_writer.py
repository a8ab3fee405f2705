"""Writing history off the chat thread: in order, in batches, and bounded when the writer is stuck."""

from __future__ import annotations

import functools
import logging
import operator
import threading

import pytest

from reactor.history.writer import WriteBehind
from tests.support import DEFAULT_TIMEOUT


def test_what_is_queued_is_written_in_order_and_settled_waits_for_it() -> None:
    written: list[int] = []
    writer: WriteBehind[int] = WriteBehind(written.extend, "test store")
    try:
        for n in range(1000):
            writer.put(n)
        writer.settled(DEFAULT_TIMEOUT)
        assert written == list(range(1000))
    finally:
        writer.close(DEFAULT_TIMEOUT)


def test_a_stuck_writer_keeps_at_most_its_bound_and_says_what_it_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    taken, release = threading.Event(), threading.Event()
    written: list[int] = []

    def write(batch: list[int]) -> None:
        taken.set()
        assert release.wait(DEFAULT_TIMEOUT)
        written.extend(batch)

    writer: WriteBehind[int] = WriteBehind(write, "test store", max_queued=10)
    try:
        writer.put(0)
        assert taken.wait(DEFAULT_TIMEOUT)  # the writer holds 0 and is stuck
        with caplog.at_level(logging.WARNING, logger="reactor"):
            for n in range(1, 14):
                writer.put(n)
            release.set()
            writer.settled(DEFAULT_TIMEOUT)
        assert written == list(range(11))  # 0, then the 10 that fitted
        assert [r.getMessage() for r in caplog.records] == [
            "test store is behind: messages are not being kept",
            "test store caught up; messages not kept meanwhile: 3",
        ]
    finally:
        release.set()
        writer.close(DEFAULT_TIMEOUT)


def test_a_failed_batch_is_logged_and_the_writer_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    written: list[int] = []

    def write(batch: list[int]) -> None:
        if 13 in batch:
            raise OSError("disk full")
        written.extend(batch)

    writer: WriteBehind[int] = WriteBehind(write, "test store")
    try:
        with caplog.at_level(logging.WARNING, logger="reactor"):
            writer.put(13)
            writer.settled(DEFAULT_TIMEOUT)
            writer.put(14)
            writer.settled(DEFAULT_TIMEOUT)
        assert written == [14]
        assert [r.getMessage() for r in caplog.records] == [
            "test store failed (disk full); messages not kept: 1"]
    finally:
        writer.close(DEFAULT_TIMEOUT)


def test_a_write_queued_while_the_writer_sleeps_is_written_without_a_reader_asking() -> None:
    # No settled() here: it would wake the writer itself.  Each put finds
    # the writer asleep on an empty queue, or about to be.
    written: list[int] = []
    wrote = threading.Condition()

    def write(batch: list[int]) -> None:
        with wrote:
            written.extend(batch)
            wrote.notify_all()

    writer: WriteBehind[int] = WriteBehind(write, "test store")
    try:
        for n in range(20):
            writer.put(n)
            with wrote:
                assert wrote.wait_for(functools.partial(operator.contains, written, n),
                                      DEFAULT_TIMEOUT)
        assert written == list(range(20))
    finally:
        writer.close(DEFAULT_TIMEOUT)
