"""The receive buffer: chunking never changes the lines, and memory is bounded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import LineBuffer, LineTooLong, RemoteProtocolError, decode_line

LIMIT = 16


def feed_all(chunks: list[bytes], limit: int = LIMIT) -> tuple[list[object], int]:
    buffer = LineBuffer(limit)
    out: list[object] = []
    most_held = 0
    for chunk in chunks:
        out.extend(buffer.feed(chunk))
        most_held = max(most_held, buffer.pending)
    return out, most_held


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


streams = st.lists(
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=8
).map(lambda lines: b"".join(line + b"\n" for line in lines))


@given(streams, st.lists(st.integers(min_value=0), max_size=12))
def test_any_chunking_yields_the_same_lines(stream: bytes, cuts: list[int]) -> None:
    whole, _ = feed_all([stream])
    assert feed_all(split_at(stream, cuts))[0] == whole


@given(streams, st.lists(st.integers(min_value=0), max_size=12))
def test_memory_held_never_exceeds_the_limit(stream: bytes, cuts: list[int]) -> None:
    _, most_held = feed_all(split_at(stream, cuts))
    assert most_held <= LIMIT + 1


@given(st.lists(st.binary(max_size=LIMIT).map(lambda b: b.replace(b"\n", b"").rstrip(b"\r"))))
def test_short_lines_come_out_exactly(lines: list[bytes]) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    assert feed_all([stream])[0] == lines


def test_crlf_is_accepted() -> None:
    assert LineBuffer().feed(b"Alice\r\nbye\r\n") == [b"Alice", b"bye"]


def test_an_overlong_line_is_reported_once_and_the_next_line_survives() -> None:
    buffer = LineBuffer(8)
    out = []
    for _ in range(1000):
        out += buffer.feed(b"x" * 1000)
        assert buffer.pending <= 9
    out += buffer.feed(b"tail\nusers\n")
    assert out == [LineTooLong(8), b"users"]


def test_splitting_is_on_newline_bytes_only() -> None:
    # U+2028 and U+0085 are line breaks to str.splitlines(); never to the wire.
    line = "a\u2028b\x85c".encode()
    assert LineBuffer().feed(line + b"\n") == [line]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "the line is not valid UTF-8 (byte 1)"),
        (b"hi\x00", "character U+0000 is not allowed raw; inside quotes write it as \\x00"),
        (b"a\x1b[2J", "character U+001B is not allowed raw; inside quotes write it as \\x1b"),
        ("x\u2028y".encode(), "character U+2028 is not allowed raw; inside quotes write it as \\u2028"),
        ("x\x85y".encode(), "character U+0085 is not allowed raw; inside quotes write it as \\x85"),
    ],
)
def test_decode_line_rejects_bad_bytes(raw: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        decode_line(raw)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "text",
    [
        "chat Bob \"col1\tcol2\"",
        "broadcast tab\tseparated\tvalues",
        "chat Bob \U0001f468\u200d\U0001f469\u200d\U0001f467",
        "chat Bob \u05e9\u05dc\u05d5\u05dd\u200f!",
        "chat Bob \u202eevil\u202c \ufeff \u00ad \U000e0041 \ue000 \u0378 \uffff",
        "chat Bob vie\u0323\u0302t " + "a" + "\u0301" * 8,
    ],
    ids=["tab-quoted", "tab-bare", "zwj-emoji", "rlm", "format-and-unassigned", "eight-marks"],
)
def test_decode_line_accepts_tabs_and_invisible_characters_which_delivery_escapes(text: str) -> None:
    assert decode_line(text.encode()) == text


@given(st.binary())
def test_decode_line_raises_only_remote_protocol_error(raw: bytes) -> None:
    try:
        decode_line(raw)
    except RemoteProtocolError:
        pass
