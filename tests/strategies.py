"""Hypothesis strategies for the wire's values, shared by the protocol and client tests."""

from __future__ import annotations

import dataclasses
import types
import typing

from hypothesis import strategies as st

from protocol import (
    COMMANDS,
    EVERYONE,
    MAX_HISTORY_PAGE,
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    USERNAME_PATTERN,
    Banned,
    BroadcastFrom,
    BroadcastNotSent,
    BroadcastSent,
    CommandSpec,
    Disconnected,
    Event,
    HelpText,
    HistoryEnd,
    HistoryLine,
    InvalidInput,
    InvalidUsername,
    Kicked,
    LoginTimedOut,
    MessageFrom,
    MessageSent,
    MessageStored,
    Moderation,
    Muted,
    NotDelivered,
    OnlineUsers,
    PasswordChanged,
    PasswordRequired,
    Registered,
    ServerBusy,
    ServerFull,
    ServiceUnavailable,
    ShuttingDown,
    TooManyFromAddress,
    TooManyTries,
    Unmuted,
    UsernameTaken,
    UserOffline,
    UserOnline,
    UserUnknown,
    WaitingDelivered,
    WaitingMessage,
    WrongPassword,
    YouAreMuted,
    format_server_time,
    is_valid_username,
    password_problem,
)
from protocol.arguments import MESSAGE_ID_PATTERN, Argument
from protocol.moderation import canonical_address, is_address
from protocol.servertime import MAX_SERVER_TIME_MS

usernames = st.from_regex(USERNAME_PATTERN, fullmatch=True).filter(is_valid_username)
# Characters that random text rarely holds but attacks and pasted text do:
# controls, TAB, invisible and format characters, bidi controls, tags,
# noncharacters, private use, Hangul fillers, quotes and backslashes, and
# combining marks to pile up (several per draw, so that long runs occur).
tricky_characters = st.sampled_from([
    "\t", "\r", "\x1b", "\x7f", "\x85", "\x9b", "\u00ad", "\u061c", "\u115f", "\u1160",
    "\u200b", "\u200d", "\u200e", "\u200f", "\u2028", "\u2029", "\u202e", "\u2060", "\u2062",
    "\u2066", "\u3164", "\ue000", "\ufdd0", "\ufeff", "\ufff9", "\uffa0", "\ufffe", "\uffff",
    "\U0001fffe", "\U000e0001", "\U000e0041", "\U000e007f", "\U000f0000", "\U00050000",
    '"', "\\", "\\x41", "\\u0301", "e", "\U0001f600", "\u0378",
])
combining_marks = st.sampled_from(["\u0301", "\u0302", "\u0489", "\u20dd", "\ufe0f",
                                   "\U0001d167", "\U000e0100"])
tricky_texts = st.lists(
    st.one_of(st.characters(), tricky_characters,
              st.lists(combining_marks, min_size=1, max_size=12).map("".join)),
).map("".join)


def is_unicode(text: str) -> bool:
    """False for text holding a lone surrogate, which tricky_texts may (as text
    decoded with surrogateescape does): no formatter writes one on the wire."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Text as it is held in memory, lone surrogates included.
raw_texts = st.one_of(st.text(), tricky_texts)
# Any text a person could mean, control characters and astral planes included;
# only the empty message is not a message.
texts = raw_texts.filter(is_unicode)
messages = texts.filter(bool)
# Any text of an acceptable length; a password is never shown, so any
# character (escaped inside quotes on the wire) will do.
passwords = st.one_of(
    st.text(min_size=MIN_PASSWORD_LENGTH, max_size=40),
    tricky_texts.filter(lambda text: MIN_PASSWORD_LENGTH <= len(text) <= MAX_PASSWORD_LENGTH),
).filter(lambda text: password_problem(text) is None)
# What a login password line may carry: any non-empty password, short ones too.
any_passwords = st.one_of(st.text(min_size=1, max_size=40), passwords)
conversations = st.one_of(st.just(EVERYONE), usernames)
message_ids = st.from_regex(MESSAGE_ID_PATTERN, fullmatch=True)
page_sizes = st.integers(1, MAX_HISTORY_PAGE)
server_times = st.integers(0, MAX_SERVER_TIME_MS).map(format_server_time)
durations = st.builds(lambda n, unit: f"{n}{unit}", st.integers(1, 3650),
                      st.sampled_from("smhd"))
# The values of each kind of command argument (see protocol.arguments).
ARGUMENTS: dict[Argument, st.SearchStrategy[typing.Any]] = {
    Argument.USERNAME: usernames,
    Argument.MESSAGE: messages,
    Argument.PASSWORD: any_passwords,
    Argument.NEW_PASSWORD: passwords,
    Argument.CONVERSATION: conversations,
    Argument.MESSAGE_ID: message_ids,
    Argument.PAGE_SIZE: page_sizes,
    Argument.TARGET: st.one_of(usernames.filter(lambda name: not is_address(name)),
                               st.ip_addresses().map(lambda a: canonical_address(str(a)))),
    Argument.DURATION: durations,
}


def command_values(spec: CommandSpec[typing.Any]) -> st.SearchStrategy[typing.Any]:
    """Any value of the command in this table entry, made from its fields' annotations."""
    hints = typing.get_type_hints(spec.kind, include_extras=True)
    return st.builds(spec.kind, **{
        field.name: _argument_values(hints[field.name], f"{spec.kind.__name__}.{field.name}")
        for field in dataclasses.fields(spec.kind)
    })


def _argument_values(hint: typing.Any, where: str) -> st.SearchStrategy[typing.Any]:
    if typing.get_origin(hint) is typing.Annotated:
        kinds = [meta for meta in hint.__metadata__ if isinstance(meta, Argument)]
        if kinds:
            if kinds[0] not in ARGUMENTS:
                raise LookupError(f"{where}: give {kinds[0]} a strategy in ARGUMENTS")
            return ARGUMENTS[kinds[0]]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # an optional argument
        return st.one_of(*(_argument_values(arg, where) for arg in typing.get_args(hint)))
    if hint is type(None):
        return st.none()
    return st.from_type(hint)


commands = st.one_of(*(command_values(spec) for spec in COMMANDS))
# Reasons are written by the server: printable ASCII, not ending in a period.
reasons = st.from_regex(r"[ -~]*[ -\-/-~]", fullmatch=True)
events: st.SearchStrategy[Event] = st.one_of(
    st.builds(UserOnline, usernames), st.builds(UserOffline, usernames),
    st.builds(UserUnknown, usernames), st.builds(UsernameTaken, usernames),
    st.builds(MessageSent, usernames, texts), st.builds(MessageFrom, usernames, texts),
    st.builds(NotDelivered, usernames, reasons),
    st.builds(BroadcastSent, texts), st.builds(BroadcastFrom, usernames, texts),
    st.builds(OnlineUsers, st.lists(usernames, max_size=5).map(tuple)),
    st.builds(InvalidInput, reasons), st.builds(InvalidUsername, reasons),
    st.builds(PasswordRequired, usernames), st.builds(WrongPassword, usernames),
    st.builds(Registered, usernames), st.builds(PasswordChanged, usernames),
    st.builds(BroadcastNotSent, reasons), st.builds(ServiceUnavailable, reasons),
    st.builds(Disconnected, reasons),
    st.builds(MessageStored, usernames), st.builds(WaitingMessage, usernames, server_times, texts),
    st.builds(WaitingDelivered, usernames, server_times),
    st.builds(HistoryLine, message_ids, server_times, usernames, conversations, texts),
    st.builds(HistoryEnd, conversations, st.integers(0, MAX_HISTORY_PAGE)),
    st.builds(Kicked, usernames, st.none() | messages),
    st.builds(Banned, usernames, st.none() | durations, st.none() | messages),
    st.builds(Muted, usernames, st.none() | durations), st.builds(Unmuted, usernames),
    st.builds(Moderation, texts),
    st.sampled_from([HelpText(), ServerFull(), TooManyFromAddress(), LoginTimedOut(),
                     ShuttingDown(), TooManyTries(), ServerBusy(), YouAreMuted()]),
)
