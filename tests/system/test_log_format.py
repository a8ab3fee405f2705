"""How a log record becomes a line (reactor.log_format): plain values, no server."""

from __future__ import annotations

import ast
import calendar
import json
import logging
import queue
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reactor.log_format import (
    EVENTS,
    RESERVED_KEYS,
    JsonFormatter,
    TextFormatter,
    Timestamps,
    UserText,
    formatter,
    ready_to_queue,
)
from reactor.logs import DroppingQueueHandler, LogPipeline

REACTOR = Path(__file__).resolve().parents[2] / "reactor"
# 2026-12-07T05:40:12.345Z
CREATED = calendar.timegm((2026, 12, 7, 5, 40, 12, 0, 0, 0)) + 0.345


def record(msg: str, *args: object, level: int = logging.INFO,
           created: float = CREATED) -> logging.LogRecord:
    made = logging.LogRecord("reactor", level, __file__, 1, msg, args, None)
    made.created, made.msecs = created, 345.0
    return made


def test_a_timestamp_is_rfc3339_utc_to_the_millisecond() -> None:
    assert Timestamps()(record("x")) == "2026-12-07T05:40:12.345Z"


def test_a_local_timestamp_names_its_offset_and_is_the_same_moment() -> None:
    stamp = Timestamps(utc=False)(record("x"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.345[+-]\d\d:\d\d", stamp), stamp
    moment = datetime.fromisoformat(stamp)
    assert moment == datetime(2026, 12, 7, 5, 40, 12, 345000, tzinfo=UTC)


def test_the_next_second_gets_its_own_date_and_time() -> None:
    stamps = Timestamps()
    assert stamps(record("x")) == "2026-12-07T05:40:12.345Z"
    assert stamps(record("x", created=CREATED + 86_400)) == "2026-12-08T05:40:12.345Z"


def test_the_text_form_is_the_original_line_after_a_timestamp() -> None:
    line = TextFormatter("Server", Timestamps()).format(
        record("%s connected (%s)", "Alice", "127.0.0.1"))
    assert line == "2026-12-07T05:40:12.345Z [Server] Alice connected (127.0.0.1)"


def test_without_timestamps_the_text_form_is_the_original_line() -> None:
    line = formatter("text", "Worker 2", "off").format(
        record("Message from %s to %s: %s", "Alice", "Bob", UserText.of('Hi "you"', True)))
    assert line == '[Worker 2] Message from Alice to Bob: "Hi \\"you\\""'


def test_a_json_line_has_time_level_event_and_named_fields() -> None:
    line = JsonFormatter("Server", Timestamps()).format(
        record("%s disconnected: %s.", "Bob", "slow consumer", level=logging.WARNING))
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2026-12-07T05:40:12.345Z", "level": "WARNING", "source": "Server",
        "event": "disconnected", "message": "Bob disconnected: slow consumer.",
        "user": "Bob", "reason": "slow consumer",
    }


def test_a_message_in_json_has_its_text_escaped_and_its_length() -> None:
    text = 'Hi "Bob"\x1b[2J'
    entry = json.loads(formatter("json", time_choice="off").format(
        record("Message from %s to %s: %s", "Alice", "Bob", UserText.of(text, True))))
    assert "time" not in entry
    assert entry["event"] == "message"
    assert (entry["from"], entry["to"], entry["length"]) == ("Alice", "Bob", len(text))
    assert entry["text"] == 'Hi "Bob"\\x1b[2J'  # no terminal control reaches a reader


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_with_log_text_off_no_form_holds_what_a_user_wrote(log_format: str) -> None:
    written = UserText.of("a private word", False)
    assert "private" not in repr(written)  # not even queued
    line = formatter(log_format).format(record("Broadcast from %s: %s", "Alice", written))
    assert "private" not in line
    assert "(14 characters)" in line


def test_a_template_not_in_the_table_keeps_its_arguments_in_order() -> None:
    entry = json.loads(formatter("json").format(record("Odd %s and %d", "thing", 3)))
    assert (entry["event"], entry["message"], entry["args"]) == (
        "Odd %s and %d", "Odd thing and 3", ["thing", 3])


def test_a_record_of_plain_values_is_queued_unformatted() -> None:
    waiting: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    made = record("Message from %s to %s: %s", "Alice", "Bob", UserText.of("hi", True))
    DroppingQueueHandler(waiting, bound=10).handle(made)
    queued = waiting.get_nowait()
    assert queued is made and queued.args == made.args
    assert not hasattr(queued, "message")  # nothing was formatted on this thread


class Mutable:
    def __init__(self) -> None:
        self.state = "before"

    def __repr__(self) -> str:
        return f"<Mutable {self.state}>"


def test_an_object_argument_is_made_text_before_it_can_change() -> None:
    thing = Mutable()
    queued = ready_to_queue(record("Could not log %r out", thing))
    thing.state = "after"
    assert formatter("text", time_choice="off").format(queued) == \
        "[Server] Could not log <Mutable before> out"
    assert json.loads(formatter("json").format(queued))["args"] == ["<Mutable before>"]


def test_a_traceback_is_made_text_before_it_is_queued() -> None:
    try:
        raise RuntimeError("planted")
    except RuntimeError:
        made = logging.getLogger("reactor").makeRecord(
            "reactor", logging.ERROR, __file__, 1, "Reload failed", (), sys.exc_info())
    queued = ready_to_queue(made)
    assert queued.exc_info is None and "RuntimeError: planted" in (queued.exc_text or "")
    entry = json.loads(formatter("json").format(queued))
    assert entry["message"] == "Reload failed"
    assert "RuntimeError: planted" in entry["exception"]
    text = formatter("text", time_choice="off").format(queued)
    assert text.startswith("[Server] Reload failed\nTraceback")


def _logged_templates() -> set[str]:
    """Every constant message template the server's code logs."""
    found = set()
    for path in REACTOR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                args = node.args[1:] if node.func.attr == "log" else node.args
                if args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
                    found.add(args[0].value)
    return found


def test_every_named_event_is_still_logged_with_its_fields() -> None:
    logged = _logged_templates()
    # The dropped-lines notice is built by reactor.logs itself, in two forms.
    logged |= {f"%d {lines} dropped (output was not keeping up)"
               for lines in ("log line", "log lines")}
    for template, event in EVENTS.items():
        assert template in logged, f"no longer logged: {template!r}"
        placeholders = re.findall(r"%[-#0 +]*\d*(?:\.\d+)?[sdrgf]", template)
        assert len(placeholders) == len(event.fields), template
        assert not RESERVED_KEYS & {*event.fields, "length"}, template


def test_the_pipeline_writes_json_lines_with_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with path.open("wb") as out:
        # The pipeline's handler and writer thread, without making it the
        # root logger's (which pytest's own capture uses).
        pipeline = LogPipeline("INFO", "test", fd=out.fileno(), log_format="json")
        pipeline.listener.start()
        try:
            pipeline.handler.handle(record("%s connected (%s)", "Alice", "::1"))
        finally:
            assert pipeline.stop()
    (line,) = path.read_text().splitlines()
    entry = json.loads(line)
    assert (entry["event"], entry["user"], entry["address"]) == ("connected", "Alice", "::1")
    assert datetime.fromisoformat(entry["time"]).utcoffset() == timedelta(0)
