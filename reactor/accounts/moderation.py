"""Operators, bans and mutes: what ``kick``, ``ban``, ``unban``, ``mute``,
``unmute`` and ``bans`` do, and how bans keep people out.

Operators are registered names marked as such in the account store
(``python -m reactor.accounts op NAME``), and bans and mutes are kept there
too, so every server that shares the store (SQLite, or Redis in a cluster)
sees the same ones:

* each command is checked against the store on a worker thread (is the
  sender an operator *now*?), written there, and then takes effect on this
  server's users through the chat (:class:`~reactor.contracts.ModerationEvents`);
* every login looks for a ban on the name or the address, and for a mute;
* every ``SWEEP_INTERVAL`` seconds each server reads the bans and mutes in
  force and applies them to its own users: that is how a ban, a mute or a
  kick decided on one server reaches a user of another.

Every action is logged (who, what, whom, why) and the target is told, with
the reason: ``<Kicked by Op: "spam">``, ``<Banned by Op for 1h: "spam">``,
``<Muted by Op for 10m.>``.  Times in the store are Unix times (servers of a
cluster share them); on a connection, a mute's end is on the chat's clock.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from protocol import (
    Ban,
    Banned,
    Bans,
    InvalidInput,
    Kick,
    Kicked,
    Moderation,
    Mute,
    Muted,
    Unban,
    Unmute,
    Unmuted,
    canonical_address,
    duration_seconds,
    format_event,
    is_address,
    username_key,
)
from reactor.accounts.store import AccountStore, Sanction
from reactor.accounts.workers import Executor
from reactor.contracts import LoginSession, ModerationEvents, Scheduler

log = logging.getLogger("reactor")

# Seconds between two reads of the bans and mutes in force by each server.
SWEEP_INTERVAL = 1.0
# A kick of a user of another server is a record that server's sweep acts
# on; one nobody acted on lapses after this many seconds.  So is an unmute
# (kind "unmute"): the sweep of the muted user's server can then say who
# lifted the mute, which it could not tell from the mute's mere absence.
KICK_RECORD_LIFE = 10.0
NOT_OPERATOR = "only operators may {word}; operators are named by the server's administrator"
# Entries in the reply to ``bans``: one line, which must stay well inside a
# client's line limit whatever the operators did.
LISTED = 20
REASON_SHOWN = 80
UNAVAILABLE = "the account store is unavailable; try again later"


def remaining(until: float | None, now: float) -> str | None:
    """How long a sanction still lasts, rounded up to a duration's unit."""
    if until is None:
        return None
    left = max(1, math.ceil(until - now))
    if left >= 120:
        # Round up to the minute first, so that a ban of 1h read a second
        # later still says 1h (not 60m).
        left = math.ceil(left / 60) * 60
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
        if left >= seconds * 2 or (left >= seconds and left % seconds == 0):
            return f"{math.ceil(left / seconds)}{unit}"
    return f"{left}s"


def _target_key(target: str) -> str:
    return canonical_address(target) if is_address(target) else username_key(target)


def find_ban(sanctions: list[Sanction], name: str, host: str) -> Sanction | None:
    """The ban on this name or address, if any."""
    keys = (username_key(name), canonical_address(host))
    return next((s for s in sanctions if s.kind == "ban" and s.target in keys), None)


def banned_line(ban: Sanction, now: float) -> bytes:
    return format_event(Banned(ban.by, remaining(ban.until, now), ban.reason))


class AccountsForModeration(Protocol):
    """What the moderator uses of :class:`~reactor.accounts.service.Accounts`."""

    store: AccountStore
    lookups: Executor

    @property
    def scheduler(self) -> Scheduler: ...

    def run_in_worker(self, connection: LoginSession, work: Callable[[], Any],
                      done: Callable[[Any], None]) -> None: ...


class Moderator:
    """The operators' commands and the sweep, for one server's accounts."""

    def __init__(self, accounts: AccountsForModeration) -> None:
        self.accounts = accounts
        self.store: AccountStore = accounts.store
        self.events: ModerationEvents | None = None
        # Counts the commands applied here: a sweep that read the store
        # before one of them was written is stale, and skipped.
        self._applied = 0
        # Why the last sweep could not read the store, or None: the accounts'
        # readiness (written by a worker, read by the chat thread).
        self.store_error: str | None = None

    def start(self, events: ModerationEvents) -> None:
        self.events = events
        self.accounts.scheduler.call_later(SWEEP_INTERVAL, self._sweep)

    # -- the commands ---------------------------------------------------------------

    def moderate(self, session: LoginSession, sender: str, command: Any,
                 events: ModerationEvents) -> None:
        # Later lines wait: "ban Bob" then "bans" must list Bob.
        slot = session.answer_later(blocking=True)
        store, word = self.store, _WORDS[type(command)]

        def work() -> object:
            if not store.is_operator(sender):
                return None
            return self._in_store(sender, command)

        def done(result: object) -> None:
            if isinstance(result, Exception):
                log.error("Account store failed on %s's %s: %s", sender, word, result)
                session.answer(slot, format_event(InvalidInput(UNAVAILABLE)))
            elif result is None:
                log.warning("Refused %s from %s: not an operator", word, sender)
                session.answer(slot, format_event(InvalidInput(NOT_OPERATOR.format(word=word))))
            else:
                self._applied += 1
                session.answer(slot, format_event(Moderation(self._effect(
                    sender, command, result, events))))

        self.accounts.run_in_worker(session, work, done)

    def _in_store(self, sender: str, command: Any) -> object:
        """The store's part of a command, on a worker thread: what ``_effect`` needs."""
        now = time.time()
        match command:
            case Ban(target, duration, reason):
                until = None if duration is None else now + duration_seconds(duration)
                self.store.add_sanction(Sanction("ban", _target_key(target), target, sender,
                                                 reason, now, until))
                return True
            case Mute(name, duration):
                until = None if duration is None else now + duration_seconds(duration)
                self.store.add_sanction(Sanction("mute", username_key(name), name, sender,
                                                 None, now, until))
                return True
            case Unban(target):
                return self.store.remove_sanction("ban", _target_key(target))
            case Unmute(name):
                key = username_key(name)
                if not self.store.remove_sanction("mute", key):
                    return False
                self.store.add_sanction(Sanction("unmute", key, name, sender, None, now,
                                                 now + KICK_RECORD_LIFE))
                return True
            case Bans():
                return self.store.sanctions(now)
        return True  # kick: nothing to store unless the user is elsewhere

    def _effect(self, sender: str, command: Any, result: Any, events: ModerationEvents) -> str:
        """Apply a command to this server's users; the operator's confirmation."""
        match command:
            case Kick(name, reason):
                log.warning("%s kicked %s: %s", sender, name, reason or "no reason given")
                line = format_event(Kicked(sender, reason))
                key = username_key(name)
                if events.moderation_disconnect({key: (line, f"kicked by {sender}")}):
                    return f"{name} kicked"
                if not events.online_anywhere(name):
                    return f"{name} is not online"
                self._record_kick(sender, name, reason)
                return f"{name} kicked (on another server)"
            case Ban(target, duration, reason):
                log.warning("%s banned %s for %s: %s", sender, target, duration or "ever",
                            reason or "no reason given")
                line = format_event(Banned(sender, duration, reason))
                hit = events.moderation_disconnect({_target_key(target): (
                    line, f"banned by {sender}")})
                lasting = f"for {duration}" if duration else "until unbanned"
                return f"{target} banned {lasting}{'; disconnected' if hit else ''}"
            case Unban(target):
                log.warning("%s unbanned %s", sender, target)
                return f"{target} unbanned" if result else f"{target} was not banned"
            case Mute(name, duration):
                log.warning("%s muted %s for %s", sender, name, duration or "ever")
                seconds = math.inf if duration is None else duration_seconds(duration)
                events.moderation_mutes(
                    {username_key(name): (seconds, format_event(Muted(sender, duration)))},
                    complete=False)
                return f"{name} muted {'for ' + duration if duration else 'until unmuted'}"
            case Unmute(name):
                log.warning("%s unmuted %s", sender, name)
                events.moderation_mutes(
                    {username_key(name): (0, format_event(Unmuted(sender)))}, complete=False)
                return f"{name} unmuted" if result else f"{name} was not muted"
            case Bans():
                return _listing(result, time.time())
        raise TypeError(f"not a moderation command: {command!r}")

    def _record_kick(self, sender: str, name: str, reason: str | None) -> None:
        now = time.time()
        kick = Sanction("kick", username_key(name), name, sender, reason, now,
                        now + KICK_RECORD_LIFE)
        self.accounts.lookups.submit(lambda: self.store.add_sanction(kick))

    # -- the sweep: what other servers decided ------------------------------------------

    def _sweep(self) -> None:
        scheduler = self.accounts.scheduler
        store, applied = self.store, self._applied

        def read() -> None:
            try:
                sanctions = store.sanctions(time.time(), prune=True)
                self.store_error = None
            except Exception as error:  # logged once per sweep; tried again next time
                log.warning("Could not read the bans: %s", error)
                self.store_error = str(error) or type(error).__name__
                sanctions = None
            scheduler.call_soon_threadsafe(lambda: self._apply(
                None if applied != self._applied else sanctions))

        try:
            self.accounts.lookups.submit(read)
        except RuntimeError:  # shut down: the server is stopping
            return

    def _apply(self, sanctions: list[Sanction] | None) -> None:
        # (None: the store could not be read, or the read is stale.)
        events = self.events
        try:
            if sanctions is not None and events is not None:
                self._enforce(events, sanctions, time.time())
        finally:
            self.accounts.scheduler.call_later(SWEEP_INTERVAL, self._sweep)

    def _enforce(self, events: ModerationEvents, sanctions: list[Sanction], now: float) -> None:
        """What the store holds, on this server's users: one pass for the
        bans and kicks, one for the mutes."""
        leaving: dict[str, tuple[bytes, str]] = {}
        kicks: set[str] = set()
        mutes: dict[str, tuple[float, bytes | None]] = {}
        unmutes: dict[str, tuple[float, bytes | None]] = {}
        for sanction in sanctions:
            if sanction.kind == "ban":
                leaving[sanction.target] = (banned_line(sanction, now),
                                            f"banned by {sanction.by}")
            elif sanction.kind == "kick":
                kicks.add(sanction.target)
                leaving.setdefault(sanction.target, (
                    format_event(Kicked(sanction.by, sanction.reason)),
                    f"kicked by {sanction.by}"))
            elif sanction.kind == "mute":
                lasting = remaining(sanction.until, now)
                mutes[sanction.target] = (
                    math.inf if sanction.until is None else sanction.until - now,
                    format_event(Muted(sanction.by, lasting)))
            elif sanction.kind == "unmute":
                # Said only to a user still muted here (the chat sends the
                # line when that changes), so once; a newer mute wins.
                unmutes[sanction.target] = (0, format_event(Unmuted(sanction.by)))
        for target in events.moderation_disconnect(leaving) & kicks:
            self.accounts.lookups.submit(_forget(self.store, "kick", target))
        events.moderation_mutes(unmutes | mutes, complete=True)

    # -- at login -------------------------------------------------------------------

    @staticmethod
    def at_login(store: AccountStore, name: str, host: str) -> tuple[bytes | None, float]:
        """On a worker: the line that refuses a banned login (or None), and
        the seconds the name stays muted (0 if it is not)."""
        now = time.time()
        sanctions = store.sanctions(now)
        ban = find_ban(sanctions, name, host)
        if ban is not None:
            return banned_line(ban, now), 0.0
        key = username_key(name)
        mute = next((s for s in sanctions if s.kind == "mute" and s.target == key), None)
        if mute is None:
            return None, 0.0
        return None, math.inf if mute.until is None else mute.until - now


def _forget(store: AccountStore, kind: str, target: str) -> Callable[[], object]:
    return lambda: store.remove_sanction(kind, target)


def _listing(sanctions: list[Sanction], now: float) -> str:
    shown = [sanction for sanction in sanctions if sanction.kind in ("ban", "mute")]
    if not shown:
        return "no bans or mutes"
    parts = []
    for sanction in shown[:LISTED]:
        lasting = remaining(sanction.until, now)
        part = (f"{sanction.kind} {sanction.shown} by {sanction.by} "
                f"{'for ' + lasting + ' more' if lasting else 'until lifted'}")
        if sanction.reason:
            reason = sanction.reason
            part += f": {reason if len(reason) <= REASON_SHOWN else reason[:REASON_SHOWN] + '...'}"
        parts.append(part)
    if len(shown) > LISTED:
        parts.append(f"and {len(shown) - LISTED} more")
    return "; ".join(parts)


_WORDS = {Kick: "kick", Ban: "ban", Unban: "unban", Mute: "mute", Unmute: "unmute", Bans: "bans"}
