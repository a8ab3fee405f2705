"""Hypothesis strategies for the wire's values, shared by the protocol and client tests."""

from __future__ import annotations

from hypothesis import strategies as st

from protocol import (
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    USERNAME_PATTERN,
    Broadcast,
    BroadcastFrom,
    BroadcastNotSent,
    BroadcastSent,
    Bye,
    ChangePassword,
    Chat,
    Disconnected,
    Event,
    Help,
    HelpText,
    InvalidInput,
    InvalidUsername,
    LoginTimedOut,
    MessageFrom,
    MessageSent,
    NotDelivered,
    OnlineUsers,
    PasswordChanged,
    PasswordRequired,
    Register,
    Registered,
    ServerFull,
    ServiceUnavailable,
    ShuttingDown,
    TooManyFromAddress,
    TooManyTries,
    UsernameTaken,
    UserOffline,
    UserOnline,
    Users,
    UserUnknown,
    WrongPassword,
    is_valid_username,
    password_problem,
)

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
# Any text a person could mean, control characters and astral planes included;
# only the empty message is not a message.
texts = st.one_of(st.text(), tricky_texts)
messages = texts.filter(bool)
# Any text of an acceptable length; a password is never shown, so any
# character (escaped inside quotes on the wire) will do.
passwords = st.one_of(
    st.text(min_size=MIN_PASSWORD_LENGTH, max_size=40),
    tricky_texts.filter(lambda text: MIN_PASSWORD_LENGTH <= len(text) <= MAX_PASSWORD_LENGTH),
).filter(lambda text: password_problem(text) is None)
# What a login password line may carry: any non-empty password, short ones too.
any_passwords = st.one_of(st.text(min_size=1, max_size=40), passwords)
commands = st.one_of(
    st.builds(Chat, usernames, messages),
    st.builds(Broadcast, messages),
    st.just(Users()), st.just(Help()), st.just(Bye()),
    st.builds(Register, passwords),
    st.builds(ChangePassword, any_passwords, passwords),
)
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
    st.sampled_from([HelpText(), ServerFull(), TooManyFromAddress(), LoginTimedOut(),
                     ShuttingDown(), TooManyTries()]),
)
