"""Hypothesis strategies for the wire's values, shared by the protocol and client tests."""

from __future__ import annotations

from hypothesis import strategies as st

from protocol import (
    Broadcast,
    BroadcastFrom,
    BroadcastSent,
    Bye,
    Chat,
    Event,
    Help,
    HelpText,
    InvalidInput,
    InvalidUsername,
    LoginTimedOut,
    MessageFrom,
    MessageSent,
    OnlineUsers,
    ServerFull,
    ShuttingDown,
    TooManyFromAddress,
    UsernameTaken,
    UserOffline,
    UserOnline,
    Users,
    UserUnknown,
    is_valid_username,
)

usernames = st.from_regex(r"[A-Za-z0-9_.\-]{1,32}", fullmatch=True).filter(is_valid_username)
# Any text a person could mean, control characters and astral planes included;
# only the empty message is not a message.
messages = st.text(min_size=1)
commands = st.one_of(
    st.builds(Chat, usernames, messages),
    st.builds(Broadcast, messages),
    st.just(Users()), st.just(Help()), st.just(Bye()),
)
# Reasons are written by the server: printable ASCII, not ending in a period.
reasons = st.from_regex(r"[ -~]*[ -\-/-~]", fullmatch=True)
events: st.SearchStrategy[Event] = st.one_of(
    st.builds(UserOnline, usernames), st.builds(UserOffline, usernames),
    st.builds(UserUnknown, usernames), st.builds(UsernameTaken, usernames),
    st.builds(MessageSent, usernames, st.text()), st.builds(MessageFrom, usernames, st.text()),
    st.builds(BroadcastSent, st.text()), st.builds(BroadcastFrom, usernames, st.text()),
    st.builds(OnlineUsers, st.lists(usernames, max_size=5).map(tuple)),
    st.builds(InvalidInput, reasons), st.builds(InvalidUsername, reasons),
    st.sampled_from([HelpText(), ServerFull(), TooManyFromAddress(), LoginTimedOut(),
                     ShuttingDown()]),
)
