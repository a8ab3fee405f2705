"""Registered names in the chat: the password step of a login, ``register`` and ``password``.

:class:`Accounts` is the chat's login step (:class:`~reactor.contracts.LoginStep`):
the chat hands it each valid name, each password line and the account
commands, and it lets a name in by calling the chat's ``admit``.  It runs on
the chat thread; the slow parts run on worker threads
(:mod:`reactor.accounts.workers`) -- a login's look-up on threads of its own,
the memory-hard hashes in a bounded queue that is fair per address and
answers ``<Server busy: try again in a moment.>`` when full -- and their
result comes back to the chat thread through the scheduler's
``call_soon_threadsafe``.  Meanwhile the line's answer is a slot in the
client's reply queue (``LoginSession.answer_later``): while logging in the
client's later lines wait behind it, the event loop serves everybody else,
and the threads backend's chat lock is not held.

A login as a registered name::

    Alice                        -> <Password required for Alice.>
    "wrong"                      -> <Wrong password for Alice.>     (back-off starts)
    "right one"                  -> <User Alice is online.>         (after the back-off)

The line after ``<Password required ...>`` is the password (bare or quoted,
:func:`protocol.parse_password`); a wrong one may be followed by another, up
to ``max_tries`` per connection, after which the connection gets ``<Too many
wrong passwords.>`` and is closed.  While a name or an address is backing off
(:mod:`reactor.accounts.backoff`), or has a password check under way, its
password line waits, unread, like a line over the flood-control rate: nothing
is dropped or refused, the answer just comes later.  A check takes its turn
(:mod:`reactor.accounts.turns`) before it is hashed, so at most one per name
and one per address is under way, and one per back-off window goes.  Waiting
rather than refusing keeps one answer per line in order and needs nothing of
a client but patience, and a guesser gains nothing by sending faster.  A
store shared by a cluster (Redis) also counts the failures for every node
(``AccountStore.shared_failure``), a check takes its turn there too
(``shared_turn``), and a login adopts the back-off that other nodes counted,
so a guesser gains nothing by spreading over nodes either.

Passwords are accepted only from a secure transport (TLS), a loopback peer,
or anywhere if the operator said ``--allow-plaintext-passwords``; otherwise a
registered name is refused before the client is asked for its password, and
``register``/``password`` are refused.  A password is never logged, never
sent to anyone, and not kept once it is hashed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from protocol import (
    InvalidInput,
    InvalidUsername,
    PasswordChanged,
    PasswordRequired,
    ProtocolError,
    Registered,
    ServerBusy,
    TooManyTries,
    WrongPassword,
    decode_line,
    format_event,
    parse_password,
    username_key,
)
from reactor.accounts.backoff import BackOff
from reactor.accounts.hashing import PasswordHasher, hasher_from_spec
from reactor.accounts.moderation import Moderator
from reactor.accounts.store import Account, AccountStore
from reactor.accounts.turns import Turns
from reactor.accounts.workers import Executor, HashQueue
from reactor.config import AccountsConfig
from reactor.contracts import Admit, LoginSession, ModerationEvents, Scheduler
from reactor.metrics import Metric, counter, gauge

log = logging.getLogger("reactor")

INSECURE = ("passwords are only accepted over TLS or from this machine;"
            " ask the operator")
UNAVAILABLE = "the account store is unavailable; try again later"
_TOO_MANY = format_event(TooManyTries())
_BUSY = format_event(ServerBusy())
# Seconds a turn in a shared store stays taken at most: a server that dies
# while checking cannot hold a name (or an address) back for longer.
TURN_HOLD = 10.0
# A check's verdict when another server of the cluster has the turn.
_LATER = "later"

Verdict = tuple[str, list[float]]


class Accounts:
    """The chat side of registered names: the chat's login step."""

    def __init__(self, settings: AccountsConfig, store: AccountStore,
                 hasher: PasswordHasher | None = None,
                 executor: Executor | None = None) -> None:
        """``executor`` (tests) runs both look-ups and hashes; by default each
        has ``settings.workers`` threads of its own."""
        self.settings = settings
        self.store = store
        self.hasher = hasher or hasher_from_spec(settings.password_hash)
        self.lookups: Executor = executor or ThreadPoolExecutor(
            max_workers=settings.workers, thread_name_prefix="accounts-lookup")
        self.hashes = HashQueue(
            executor or ThreadPoolExecutor(max_workers=settings.workers,
                                           thread_name_prefix="accounts-hash"),
            settings.hash_queue, settings.hash_queue_per_address)
        self.names = BackOff(settings.backoff_first, settings.backoff_max,
                             settings.backoff_keys)
        self.addresses = BackOff(settings.backoff_first, settings.backoff_max,
                                 settings.backoff_keys)
        self.turns = Turns(self.names, self.addresses, lambda: self.scheduler.clock(),
                           lambda delay, then: self.scheduler.call_later(delay, then))
        self._scheduler: Scheduler | None = None
        self.moderator = Moderator(self)
        # Logins and account commands refused here, by reason (/metrics).
        self.refusals: Counter[str] = Counter()

    def start(self, scheduler: Scheduler, events: ModerationEvents | None = None) -> None:
        self._scheduler = scheduler
        if events is not None:
            self.moderator.start(events)

    def moderate(self, session: LoginSession, sender: str, command: Any,
                 events: ModerationEvents) -> None:
        """An operator's command: see :mod:`reactor.accounts.moderation`."""
        self.moderator.moderate(session, sender, command, events)

    def run_in_worker(self, connection: LoginSession, work: Callable[[], Any],
                      done: Callable[[Any], None]) -> None:
        """``work()`` on a look-up worker, then ``done(result or exception)``
        on the chat thread."""
        self._in_worker(connection, work, done)

    @property
    def scheduler(self) -> Scheduler:
        assert self._scheduler is not None, "start() the accounts with a scheduler first"
        return self._scheduler

    def close(self) -> None:
        self.lookups.shutdown(wait=True, cancel_futures=True)
        self.hashes.executor.shutdown(wait=True, cancel_futures=True)
        self.store.close()

    # -- for the admin endpoint (contracts.Monitored) ---------------------------------

    def metrics(self) -> list[Metric]:
        return [
            gauge("reactor_accounts_hash_queue", "Password hashes waiting or under way.",
                  len(self.hashes)),
            gauge("reactor_accounts_hash_queue_limit",
                  "Hashes that may wait or run at once; past it logins are told the server"
                  " is busy.", self.hashes.capacity),
            counter("reactor_accounts_refusals_total",
                    "Logins and account commands refused by the accounts, by reason.",
                    label="reason", values=self.refusals,
                    known=("wrong_password", "busy", "banned")),
        ]

    def unready_reason(self) -> str | None:
        error = self.moderator.store_error
        return None if error is None else f"the account store is out of reach: {error}"

    # -- the rules ------------------------------------------------------------

    def is_secure(self, connection: LoginSession) -> bool:
        """May this connection send passwords?"""
        if connection.secure:
            return True
        if self.settings.allow_plaintext_passwords:
            return True
        if self.settings.trust_loopback:
            try:
                return ipaddress.ip_address(connection.peer_host).is_loopback
            except ValueError:
                return False
        return False

    @staticmethod
    def _shared_keys(name: str, host: str) -> list[str]:
        """The name's and the address's keys in a store's shared back-off."""
        return [f"name:{username_key(name)}", f"address:{host}"]

    def _adopt(self, name: str, host: str, waits: list[float]) -> None:
        """Back-offs that other servers of a cluster counted hold here too."""
        now = self.scheduler.clock()
        self.names.adopt(username_key(name), now, waits[0])
        self.addresses.adopt(host, now, waits[1])

    def _failed(self, name: str, host: str, shared: list[float]) -> None:
        now = self.scheduler.clock()
        delay = max(self.names.failed(username_key(name), now),
                    self.addresses.failed(host, now), *shared)
        if shared:
            self._adopt(name, host, shared)
        log.warning("Login failures for %s from %s: backing off %g s", name, host, delay)

    # -- the worker threads -------------------------------------------------------

    def _in_worker(self, connection: LoginSession, work: Callable[[], Any],
                   done: Callable[[Any], None], *, hashing: bool = False) -> bool:
        """Run ``work`` on a worker (a hash worker if ``hashing``);
        ``done(result)`` (or ``done(exception)``) later on the chat thread,
        under the connection's containment.  False, and nothing done, if the
        hash queue is full.

        The worker hands the result back itself, rather than through a
        future's done-callback: that would run on the chat thread when the
        future is already done, and the threads backend's lock is not
        reentrant.
        """
        guarded = connection.guard(done)
        call_soon = self.scheduler.call_soon_threadsafe
        host, hashes = connection.peer_host, self.hashes

        def back(result: object) -> None:
            if hashing:
                hashes.finished(host)
            guarded(result)

        def run() -> None:
            try:
                result = work()
            except Exception as error:  # reported on the chat thread
                result = error
            call_soon(lambda: back(result))

        try:
            if not hashing:
                self.lookups.submit(run)
            elif not hashes.submit(host, run):
                return False
        except RuntimeError as error:  # shut down: the server is stopping
            guarded(error)
        return True

    def _in_turn(self, connection: LoginSession, slot: object, name: str,
                 check: Callable[[], Verdict], decided: Callable[[object], None]) -> None:
        """Run the password check ``check`` on a hash worker in its turn
        (:mod:`reactor.accounts.turns`), then ``decided(verdict)``; the turn
        is given back only once the verdict is counted."""
        key, host = username_key(name), connection.peer_host
        keys, store, retry = self._shared_keys(name, host), self.store, self.settings.backoff_first

        def work() -> Verdict:
            if retry <= 0:  # no back-off: nothing to take turns for across servers
                return check()
            waits = store.shared_turn(keys, TURN_HOLD, retry)
            if any(wait > 0 for wait in waits):
                return _LATER, waits
            try:
                return check()
            finally:
                with contextlib.suppress(Exception):  # else it lapses after TURN_HOLD
                    store.shared_release(keys)

        def back(result: object) -> None:
            verdict, waits = _outcome(result)
            try:
                if verdict == _LATER:  # another server checks, or counted a failure
                    self._adopt(name, host, waits)
                else:
                    decided(result)
            finally:
                self.turns.done(key, host)
            if verdict == _LATER:
                take()

        def start() -> None:
            try:
                submitted = self._in_worker(connection, work, back, hashing=True)
            except BaseException:
                self.turns.done(key, host)  # a turn is never left taken
                raise
            if not submitted:
                self.turns.done(key, host)
                self.refusals["busy"] += 1
                connection.answer(slot, _BUSY)

        def take() -> None:
            # (Both under the connection's containment: a turn's timer is the
            # scheduler's, not the connection's.)
            self.turns.take(key, host, connection.guard(start), lambda: connection.is_open,
                            connection.guard(lambda: connection.answer(slot)))

        take()

    # -- logging in ---------------------------------------------------------------

    def login(self, connection: LoginSession, name: str, admit: Admit) -> None:
        """A valid username: registered (ask the password) or open (admit it)."""
        slot = connection.answer_later()
        store, keys = self.store, self._shared_keys(name, connection.peer_host)

        host = connection.peer_host

        def look_up() -> tuple[Account | None, list[float], bytes | None, float]:
            banned, muted = Moderator.at_login(store, name, host)
            if banned is not None:
                return None, [], banned, 0.0
            account = store.get(name)
            waits = [] if account is None else store.shared_waits(keys)
            return account, waits, None, muted

        self._in_worker(connection, look_up,
                        lambda result: self._looked_up(connection, slot, name, admit, result))

    def _looked_up(self, connection: LoginSession, slot: object, name: str, admit: Admit,
                   result: object) -> None:
        if not connection.is_open:
            connection.answer(slot)
            return
        if isinstance(result, Exception):
            log.error("Account store failed looking up %s: %s", name, result)
            connection.answer(slot, format_event(InvalidUsername(UNAVAILABLE)))
            return
        found, waits, banned, muted = cast(
            tuple[Account | None, list[float], bytes | None, float], result)
        if banned is not None:
            log.warning("Refused %s from %s: banned", name, connection.peer_host)
            self.refusals["banned"] += 1
            connection.send(banned)  # while logging in, nothing else is awaited
            connection.close("banned")
            connection.answer(slot)
            return
        if muted:
            connection.muted_until = self.scheduler.clock() + muted
        if found is None:
            admit(connection, name)  # the open chat: the claim's answer follows this one
            connection.answer(slot)
        elif not self.is_secure(connection):
            log.info("Refused registered name %s from %s: not a secure connection",
                     name, connection.peer_host)
            connection.answer(slot, format_event(
                InvalidUsername(f"{name} is registered, and {INSECURE}")))
        else:
            # Logged in under the spelling it was registered with.
            self._adopt(name, connection.peer_host, waits)
            connection.ask_password(found.name)
            connection.answer(slot, format_event(PasswordRequired(found.name)))

    def password_line(self, connection: LoginSession, raw: bytes, admit: Admit) -> None:
        """The line after ``<Password required for NAME.>``.  Never logged."""
        name = connection.password_for
        assert name is not None
        try:
            password = parse_password(decode_line(raw))
        except ProtocolError as error:
            connection.reply(format_event(InvalidInput(error.reason)))
            return
        slot = connection.answer_later()
        store, hasher = self.store, self.hasher
        keys, settings = self._shared_keys(name, connection.peer_host), self.settings

        def check() -> Verdict:
            account = store.get(name)
            if account is None:
                return "unregistered", []  # removed meanwhile: an open name now
            if not hasher.verify(account.password_hash, password):
                return "wrong", store.shared_failure(keys, settings.backoff_first,
                                                     settings.backoff_max)
            if hasher.needs_rehash(account.password_hash):
                # Parameters were raised since: the hash catches up now,
                # the one moment the password is known.
                store.set_password(name, hasher.hash(password))
            store.shared_success(keys[0])
            return "right", []

        self._in_turn(connection, slot, name, check, lambda verdict: self._checked(
            connection, slot, name, admit, verdict))

    def _checked(self, connection: LoginSession, slot: object, name: str, admit: Admit,
                 result: object) -> None:
        host = connection.peer_host
        verdict, shared = _outcome(result)
        if verdict == "wrong":
            self._failed(name, host, shared)  # counted even if the guesser has gone
        if not connection.is_open:
            connection.answer(slot)
            return
        if isinstance(verdict, Exception):
            log.error("Account store failed checking %s: %s", name, verdict)
            connection.password_done()
            connection.answer(slot, format_event(InvalidUsername(UNAVAILABLE)))
        elif verdict == "wrong":
            self.refusals["wrong_password"] += 1
            connection.password_tries += 1
            if connection.password_tries < self.settings.max_tries:
                connection.answer(slot, format_event(WrongPassword(name)))
                return
            log.warning("Closed the connection from %s: %d wrong passwords for %s",
                        host, connection.password_tries, name)
            # Said at once: while logging in, nothing else is awaited.
            connection.send(format_event(WrongPassword(name)))
            connection.send(_TOO_MANY)
            connection.close("too many wrong passwords")
            connection.answer(slot)
        else:
            connection.password_done()
            if verdict == "right":
                self.names.succeeded(username_key(name))
                connection.registered = True
            admit(connection, name)  # the claim's answer follows this one
            connection.answer(slot)

    # -- register and password ------------------------------------------------------

    def is_registered(self, connection: LoginSession, name: str,
                      on_result: Callable[[str | None], None]) -> None:
        store = self.store

        def look_up() -> str | None:
            account = store.get(name)
            return None if account is None else account.name

        def done(result: object) -> None:
            if isinstance(result, Exception):
                log.error("Account store failed looking up %s: %s", name, result)
                result = None
            on_result(cast(str | None, result))

        self._in_worker(connection, look_up, done)

    def register(self, connection: LoginSession, name: str, password: str,
                 on_registered: Callable[[], None] | None = None) -> None:
        if not self.is_secure(connection):
            connection.reply(format_event(InvalidInput(INSECURE)))
            return
        # Later lines may depend on the store as this leaves it: they wait.
        slot = connection.answer_later(blocking=True)
        store, hasher = self.store, self.hasher

        def work() -> bool:
            if store.get(name) is not None:
                return False  # no hash spent on a name that is taken
            return store.create(name, hasher.hash(password))

        def done(created: object) -> None:
            if isinstance(created, Exception):
                log.error("Account store failed registering %s: %s", name, created)
                connection.answer(slot, format_event(InvalidInput(UNAVAILABLE)))
            elif created:
                log.info("%s registered (%s)", name, connection.peer_host)
                connection.registered = True
                if on_registered is not None:
                    on_registered()
                connection.answer(slot, format_event(Registered(name)))
            else:
                connection.answer(slot, format_event(InvalidInput(
                    f"{name} is already registered; change its password with"
                    ' password "<old>" "<new>"')))

        if not self._in_worker(connection, work, done, hashing=True):
            self.refusals["busy"] += 1
            connection.answer(slot, _BUSY)

    def change_password(self, connection: LoginSession, name: str, old: str, new: str) -> None:
        if not self.is_secure(connection):
            connection.reply(format_event(InvalidInput(INSECURE)))
            return
        # Later lines may depend on the store as this leaves it: they wait.
        slot = connection.answer_later(blocking=True)
        store, hasher = self.store, self.hasher
        keys, settings = self._shared_keys(name, connection.peer_host), self.settings

        def check() -> Verdict:
            account = store.get(name)
            if account is None:
                return "unregistered", []
            if not hasher.verify(account.password_hash, old):
                return "wrong", store.shared_failure(keys, settings.backoff_first,
                                                     settings.backoff_max)
            if not store.set_password(name, hasher.hash(new)):
                return "unregistered", []
            store.shared_success(keys[0])
            return "changed", []

        def done(result: object) -> None:
            verdict, shared = _outcome(result)
            if isinstance(verdict, Exception):
                log.error("Account store failed changing the password of %s: %s", name, verdict)
                connection.answer(slot, format_event(InvalidInput(UNAVAILABLE)))
            elif verdict == "changed":
                self.names.succeeded(username_key(name))
                log.info("Password changed for %s (%s)", name, connection.peer_host)
                connection.answer(slot, format_event(PasswordChanged(name)))
            elif verdict == "wrong":
                self._failed(name, connection.peer_host, shared)
                connection.answer(slot, format_event(WrongPassword(name)))
            else:
                connection.answer(slot, format_event(InvalidInput(
                    f'{name} is not registered; register it with register "<password>"')))

        self._in_turn(connection, slot, name, check, done)


def _outcome(result: object) -> tuple[object, list[float]]:
    """A password check's result from a worker: its verdict and the shared
    back-off it started, or the exception it raised (and no back-off)."""
    if isinstance(result, Exception):
        return result, []
    return cast(tuple[object, list[float]], result)
