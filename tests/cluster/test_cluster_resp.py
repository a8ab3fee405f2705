"""The link's wire format without sockets (reactor.redis.resp): what a batch
of script calls sends, and how Redis's replies are matched to its calls."""

from __future__ import annotations

import logging

import hiredis
import pytest

from reactor.cluster.scripts import CLUSTER_SCRIPTS, PREFIX, SCRIPTS, SHAS
from reactor.redis.resp import (
    UNAVAILABLE,
    Call,
    ProtocolError,
    Refusals,
    Replies,
    inbox_entries,
    pack,
)
from reactor.redis.resp import Batch as ScriptBatch

LOAD_SCRIPTS = CLUSTER_SCRIPTS.load


def Batch(calls: list[Call]) -> ScriptBatch:
    return ScriptBatch(calls, CLUSTER_SCRIPTS)


def calls(*scripts: str) -> list[Call]:
    return [Call(script, ("node", "epoch", 0, 100, 100, i), lambda reply: None)
            for i, script in enumerate(scripts)]


def evalsha(call: Call) -> bytes:
    return pack(("EVALSHA", SHAS[call.script], 1, PREFIX, *call.argv))


def test_one_call_is_one_evalsha_and_its_reply_is_its_own() -> None:
    batch = Batch(calls("renew"))
    assert batch.data == evalsha(batch.calls[0])
    assert not batch.done
    assert batch.add([b"OK", 12]) is None
    assert batch.done
    assert batch.outcomes(Refusals("redis")) == [[b"OK", 12]]


def test_several_calls_are_one_multi_exec_and_exec_holds_their_replies_in_order() -> None:
    batch = Batch(calls("broadcast", "direct", "broadcast"))
    assert batch.data == b"".join([pack(("MULTI",)), *map(evalsha, batch.calls),
                                   pack(("EXEC",))])
    for reply in [b"OK", b"QUEUED", b"QUEUED", b"QUEUED"]:
        assert batch.add(reply) is None
        assert not batch.done
    assert batch.add([[b"OK"], [b"OFFLINE"], [b"OK"]]) is None
    assert batch.done
    assert batch.outcomes(Refusals("redis")) == [[b"OK"], [b"OFFLINE"], [b"OK"]]


def test_a_refused_call_is_unavailable_and_costs_the_others_nothing() -> None:
    batch = Batch(calls("broadcast", "broadcast"))
    for reply in [b"OK", b"QUEUED", b"QUEUED",
                  [hiredis.ReplyError("ERR something went wrong"), [b"OK"]]]:
        batch.add(reply)
    assert batch.outcomes(Refusals("redis")) == [UNAVAILABLE, [b"OK"]]


def test_a_transaction_aborted_when_queued_answers_every_call_unavailable() -> None:
    batch = Batch(calls("broadcast", "claim"))
    for reply in [b"OK", b"QUEUED", hiredis.ReplyError("ERR wrong number of arguments"),
                  hiredis.ReplyError("EXECABORT Transaction discarded")]:
        batch.add(reply)
    assert batch.done
    assert batch.outcomes(Refusals("redis")) == [UNAVAILABLE, UNAVAILABLE]


def test_calls_redis_had_no_script_for_are_sent_again_after_loading_the_scripts() -> None:
    batch = Batch(calls("broadcast", "renew", "broadcast"))
    for reply in [b"OK", b"QUEUED", b"QUEUED", b"QUEUED"]:
        batch.add(reply)
    noscript = hiredis.ReplyError("NOSCRIPT No matching script. Please use EVAL.")
    retry = batch.add([noscript, [b"OK", 1], noscript])
    first, third = batch.calls[0], batch.calls[2]
    assert retry == LOAD_SCRIPTS + b"".join(
        [pack(("MULTI",)), evalsha(first), evalsha(third), pack(("EXEC",))])
    assert not batch.done
    for _ in SCRIPTS:  # the loads' replies (their SHA1s)
        assert batch.add(b"0123") is None
    for reply in [b"OK", b"QUEUED", b"QUEUED"]:
        batch.add(reply)
    assert not batch.done
    batch.add([[b"OK", "first"], [b"OK", "third"]])
    assert batch.done
    assert batch.outcomes(Refusals("redis")) == [[b"OK", "first"], [b"OK", 1], [b"OK", "third"]]


def test_refusals_are_logged_once_when_they_start_and_once_when_calls_run_again(
    caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reactor")
    refusals = Refusals("redis")
    oom = hiredis.ReplyError("OOM command not allowed when used memory > 'maxmemory'.")
    for _ in range(50):  # every renewal of a long episode, and what it held up
        batch = Batch(calls("renew"))
        batch.add(oom)
        assert batch.outcomes(refusals) == [UNAVAILABLE]
    other = Batch(calls("claim"))
    other.add(hiredis.ReplyError("READONLY You can't write against a read only replica."))
    other.outcomes(refusals)  # a different refusal is news
    ran = Batch(calls("renew"))
    ran.add([b"OK", 12])
    ran.outcomes(refusals)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 3, lines
    assert "OOM" in lines[0] and "READONLY" in lines[1]
    assert "runs script calls again (51 were refused)" in lines[2]


@pytest.mark.parametrize("split", [1, 2, 7, 1000])
def test_replies_come_whole_however_the_bytes_are_split(split: int) -> None:
    wire = b"+OK\r\n*2\r\n$3\r\nabc\r\n:5\r\n-ERR no\r\n$-1\r\n"
    replies = Replies()
    got = []
    for start in range(0, len(wire), split):
        got += replies.feed(wire[start:start + split])
    assert got[:3] == [b"OK", [b"abc", 5], got[2]]
    assert isinstance(got[2], hiredis.ReplyError) and str(got[2]) == "ERR no"
    assert got[3] is None


def test_bytes_that_are_not_resp_are_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        list(Replies().feed(b"HTTP/1.1 400 Bad Request\r\n"))


def test_an_inbox_read_gives_its_entries_with_their_fields() -> None:
    reply = [[b"{chat}:inbox:n1", [[b"1-0", [b"t", b"bc", b"n", b"4", b"data", b"x"]],
                                   [b"1-1", [b"t", b"on", b"n", b"5"]]]]]
    assert inbox_entries(reply) == [
        (b"1-0", {b"t": b"bc", b"n": b"4", b"data": b"x"}),
        (b"1-1", {b"t": b"on", b"n": b"5"}),
    ]
    assert inbox_entries(None) == []  # the block timed out
