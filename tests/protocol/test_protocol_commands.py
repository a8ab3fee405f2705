"""Client commands: the grammar, round trips, and the parser's one error type."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    COMMAND_NAMES,
    COMMANDS,
    Broadcast,
    Bye,
    ChangePassword,
    Chat,
    Command,
    CommandSpec,
    Help,
    InvalidInput,
    InvalidUsername,
    LocalProtocolError,
    Login,
    ProtocolError,
    Register,
    RemoteProtocolError,
    Users,
    decode_line,
    format_command,
    format_event,
    format_password,
    parse_command,
    parse_login,
    parse_password,
    password_problem,
)
from protocol.arguments import Argument
from protocol.escaping import find_unsafe
from protocol.events import HELP_LINE
from tests.strategies import (
    ARGUMENTS,
    any_passwords,
    command_values,
    commands,
    passwords,
    texts,
    tricky_texts,
    usernames,
)

USERNAME_RULE = (
    "a username is 1-32 ASCII letters, digits, '_', '-' or '.', starting with a letter or digit"
)


def parse_wire(data: bytes) -> object:
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    return parse_command(data[:-1].decode("utf-8"))


@given(commands)
def test_every_command_survives_format_then_parse(command: object) -> None:
    assert parse_wire(format_command(command)) == command  # type: ignore[arg-type]


@given(commands)
def test_a_formatted_command_is_one_line_of_safe_characters(command: object) -> None:
    data = format_command(command)  # type: ignore[arg-type]
    line = data[:-1].decode("utf-8")
    assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F for c in line)
    assert "\u2028" not in line and "\u2029" not in line
    assert find_unsafe(line) is None
    # ... so the server takes it as it is.
    assert decode_line(data[:-1]) == line


# -- the command table: every entry gets these properties without a test of its own ----


def _by_name(spec: CommandSpec[Command]) -> str:
    return spec.name


@pytest.mark.parametrize("spec", COMMANDS, ids=_by_name)
@given(data=st.data())
def test_every_entry_of_the_table_survives_format_then_parse(
    spec: CommandSpec[Command], data: st.DataObject
) -> None:
    command = data.draw(command_values(spec))
    wire = format_command(command)
    assert parse_wire(wire) == command
    assert type(parse_wire(wire)) is spec.kind
    # ... written as one line of safe characters, that starts with its word ...
    line = wire[:-1].decode("utf-8")
    assert find_unsafe(line) is None and decode_line(wire[:-1]) == line
    assert line.split(" ", 1)[0] == spec.name
    # ... which may be written in any case, with spaces around the line.
    shouted = spec.name.upper() + line[len(spec.name) :]
    assert parse_command(f"  {shouted}  ") == command


@pytest.mark.parametrize("spec", COMMANDS, ids=_by_name)
def test_every_entry_answers_a_misuse_with_its_own_usage(spec: CommandSpec[Command]) -> None:
    if spec.parse is None:
        with pytest.raises(RemoteProtocolError) as caught:
            parse_command(f"{spec.name} something")
        assert caught.value.reason == f"{spec.name} takes no arguments"
        assert parse_command(spec.name) == spec.kind()
    else:
        with pytest.raises(RemoteProtocolError) as caught:
            parse_command(spec.name)
        assert caught.value.reason == f"usage is {spec.usage}"


def test_the_names_and_the_help_line_come_from_the_table_in_its_order() -> None:
    assert tuple(spec.name for spec in COMMANDS) == COMMAND_NAMES
    usages = HELP_LINE.removeprefix("<Commands: ").split(". Inside quotes")[0]
    assert usages.split(" | ") == [spec.usage for spec in COMMANDS]


def test_every_argument_kind_has_values_for_the_round_trips() -> None:
    assert set(ARGUMENTS) == set(Argument)


def test_a_word_that_names_no_entry_is_an_unknown_command() -> None:
    for spec in COMMANDS:
        with pytest.raises(RemoteProtocolError, match="unknown command"):
            parse_command(spec.name + "x")


@given(usernames, texts)
def test_the_fast_path_for_chat_gives_what_the_general_parser_gives(name: str, text: str) -> None:
    # A leading space takes a line past the fast path; the parser ignores it.
    for line in (f'chat {name} "{text}"', f"chat {name} {text}"):
        try:
            fast = parse_command(line)
        except RemoteProtocolError as error:
            with pytest.raises(RemoteProtocolError) as caught:
                parse_command(" " + line)
            assert caught.value.reason == error.reason
        else:
            assert parse_command(" " + line) == fast
            assert type(fast) is Chat


@given(st.text())
def test_the_parser_raises_only_remote_protocol_error(line: str) -> None:
    try:
        parse_command(line)
    except RemoteProtocolError:
        pass


@given(st.text())
def test_the_login_parser_raises_only_remote_protocol_error(line: str) -> None:
    try:
        parse_login(line)
    except RemoteProtocolError:
        pass


@given(st.one_of(st.binary(), st.text().map(str.encode), tricky_texts.map(
    lambda text: text.encode("utf-8", "surrogatepass"))))
def test_every_reason_a_parser_gives_can_be_sent_back_as_an_event(raw: bytes) -> None:
    for parse in (parse_command, parse_login):
        try:
            parse(decode_line(raw))
        except RemoteProtocolError as error:
            format_event(InvalidInput(error.reason))
            format_event(InvalidUsername(error.reason))


@given(usernames)
def test_login_round_trip(name: str) -> None:
    assert parse_login(format_command(Login(name))[:-1].decode()) == Login(name)


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ('chat Bob "Hello Bob!"', Chat("Bob", "Hello Bob!")),
        ("chat Bob Hello Bob!", Chat("Bob", "Hello Bob!")),
        ('chat Bob "say \\"hi\\" \\\\o/"', Chat("Bob", 'say "hi" \\o/')),
        ('chat Bob "C:\\dir"', Chat("Bob", "C:\\dir")),
        ('chat Bob "\\x1b[31m"', Chat("Bob", "\x1b[31m")),
        ('  CHAT   Bob    "spaced"  ', Chat("Bob", "spaced")),
        ('broadcast "to all"', Broadcast("to all")),
        ("broadcast to all, bare", Broadcast("to all, bare")),
        ('chat Bob "héllo 👋"', Chat("Bob", "héllo 👋")),
        ('chat Bob "col1\tcol2"', Chat("Bob", "col1\tcol2")),
        ("chat Bob tab\tin a bare message\t", Chat("Bob", "tab\tin a bare message\t")),
        ("broadcast \tindented", Broadcast("\tindented")),
        ("chat Bob \t", Chat("Bob", "\t")),
        ('chat Bob "zw\u200dj \\u200d"', Chat("Bob", "zw\u200dj \u200d")),
        ("chat Bob-2 hi", Chat("Bob-2", "hi")),
        ("users", Users()),
        ("Help", Help()),
        ("bye", Bye()),
    ],
)
def test_commands_as_people_type_them(line: str, command: object) -> None:
    assert parse_command(line) == command


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("dance", "unknown command"),
        ("chat", 'usage is chat <user> "<message>"'),
        ("chat Bob", 'usage is chat <user> "<message>"'),
        ('chat Bob "unterminated', "unterminated quote"),
        ('chat Bob "hi" there', "text after the closing quote"),
        ('chat Bob ""', "the message is empty"),
        ('broadcast ""', "the message is empty"),
        ("broadcast", 'usage is broadcast "<message>"'),
        ("users now", "users takes no arguments"),
        ('chat <Bob> "x"', "the recipient is not a valid username"),
        ('chat Bob "\\ud800"', "escape \\ud800 is not a Unicode character"),
        ("", "empty command"),
        ("chat Bob\thi", "a tab does not separate words; use a space"),
        ("chat Bob\t hi", "a tab does not separate words; use a space"),
        ("chat\tBob hi", "a tab does not separate words; use a space"),
        ("users\t", "a tab does not separate words; use a space"),
        ("\t", "unknown command"),
        ("chat -x hi", "the recipient is not a valid username"),
        ("chat everyone hi", "the recipient is not a valid username"),
    ],
)
def test_mistakes_get_a_reason(line: str, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        parse_command(line)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "a username cannot be empty"),
        ("a" * 33, "a username has at most 32 characters"),
        ("Al ice", USERNAME_RULE),
        ("Alice!", USERNAME_RULE),
        ("Ålice", USERNAME_RULE),
        ("Al\tice", USERNAME_RULE),
        ("-", USERNAME_RULE),
        (".", USERNAME_RULE),
        ("..", USERNAME_RULE),
        ("...", USERNAME_RULE),
        ("--help", USERNAME_RULE),
        ("-x", USERNAME_RULE),
        ("_alice", USERNAME_RULE),
        (".hidden", USERNAME_RULE),
        ("everyone", "the name everyone is reserved"),
        ("EVERYONE", "the name EVERYONE is reserved"),
    ],
)
def test_bad_usernames_are_refused_with_the_rule(name: str, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        parse_login(name)
    assert caught.value.reason == reason


def test_usernames_start_with_a_letter_or_digit_then_use_the_whole_alphabet() -> None:
    assert parse_login(" A-z_0.9 ") == Login("A-z_0.9")
    assert parse_login("a" * 32) == Login("a" * 32)
    assert parse_login("7") == Login("7")
    assert parse_login("x-") == Login("x-")
    assert parse_login("a...") == Login("a...")
    assert parse_login("everyone2") == Login("everyone2")


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (Chat("Bob", ""), "the message is empty"),
        (Broadcast(""), "the message is empty"),
        (Chat("-x", "hi"), USERNAME_RULE),
        (Chat("everyone", "hi"), "the name everyone is reserved"),
        (Login("a b"), USERNAME_RULE),
        (Login(""), "a username cannot be empty"),
        (Broadcast("\ud800"), "the message is not valid Unicode"),
    ],
)
def test_formatting_an_invalid_command_is_our_own_error(command: object, reason: str) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        format_command(command)  # type: ignore[arg-type]
    assert caught.value.reason == reason


def test_both_kinds_of_error_are_protocol_errors() -> None:
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert issubclass(LocalProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)


# -- registered names: register, password, and the password line ----------------------


@given(any_passwords)
def test_every_password_line_survives_format_then_parse(password: str) -> None:
    data = format_password(password)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert parse_password(decode_line(data[:-1])) == password


@given(st.text())
def test_the_password_line_parser_raises_only_remote_protocol_error(line: str) -> None:
    try:
        parse_password(line)
    except RemoteProtocolError as error:
        format_event(InvalidInput(error.reason))


@given(passwords)
def test_a_password_typed_bare_or_quoted_is_the_same_in_register_and_at_login(
    password: str,
) -> None:
    quoted = format_password(password)[:-1].decode()
    assert parse_command(f"register {quoted}") == Register(password)
    assert parse_password(quoted) == password
    bare = password.strip(" ")
    if bare and not bare.startswith('"') and find_unsafe(bare) is None and "\n" not in bare \
            and password_problem(bare) is None:
        assert parse_command(f"register {bare}") == Register(bare)
        assert parse_password(bare) == bare


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ('register "correct horse"', Register("correct horse")),
        ("register correct horse battery  ", Register("correct horse battery")),
        ('REGISTER "with \\"quotes\\""', Register('with "quotes"')),
        ('password "old one" "new one!"', ChangePassword("old one", "new one!")),
        ("password old12345 new12345", ChangePassword("old12345", "new12345")),
        ('password  x   "new \\\\ one"', ChangePassword("x", "new \\ one")),
    ],
)
def test_password_commands_as_people_type_them(line: str, command: object) -> None:
    assert parse_command(line) == command


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("register", 'usage is register "<password>"'),
        ('register ""', "the password is empty"),
        ("register short", "a password has at least 8 characters"),
        ("register " + "x" * 257, "a password has at most 256 characters"),
        ("password", 'usage is password "<old>" "<new>"'),
        ("password onlyone", 'usage is password "<old>" "<new>"'),
        ("password a b c", 'usage is password "<old>" "<new>"'),
        ('password "a"x newpassword', "text after the closing quote"),
        ('password "a', "unterminated quote"),
        ("password old new", "a password has at least 8 characters"),
    ],
)
def test_password_command_mistakes_get_a_reason(line: str, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        parse_command(line)
    assert caught.value.reason == reason


def test_the_password_line_is_bare_or_quoted() -> None:
    assert parse_password("  hunter22  ") == "hunter22"
    assert parse_password('"  spaced  "') == "  spaced  "
    assert parse_password("short") == "short"  # merely wrong, not malformed
    with pytest.raises(RemoteProtocolError):
        parse_password('"open')
    with pytest.raises(RemoteProtocolError):
        parse_password("   ")


def test_passwords_never_show_in_a_repr() -> None:
    assert "hunter22" not in repr(Register("hunter22"))
    assert "hunter22" not in repr(ChangePassword("hunter22", "hunter23"))
