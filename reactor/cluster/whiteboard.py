"""The whiteboard shared by every server process pointed at one Redis.

Each node keeps a *mirror* of the cluster on its chat thread: its own users
(their connections), everyone else's (name and node), and the names that
were seen and left.  ``lookup``, ``users`` and "offline or unknown" read the
mirror; everything that changes shared state is a script in Redis
(:mod:`reactor.cluster.scripts`), answered later, as the whiteboard's
interface allows.  The mirror follows Redis through the node's inbox
stream, in which Redis itself wrote every change in the order it made them.

**Liveness** is a lease per node, renewed every lease / 6 by a timer on the
chat thread (a node whose chat thread is wedged stops renewing, and its users
go offline: that is the point).  A renewal also reaps nodes whose lease ran
out (see :data:`~reactor.cluster.scripts.RENEW`).  A node that learns it was
reaped -- it was frozen past its lease -- is *fenced*: it tells its clients,
closes them, and joins again as a new node.  Until a renewal succeeds within
the lease, the node does nothing that needs the cluster, local direct
messages included: a node cut off from Redis cannot know whether it has
already been declared dead.  For the same reason it hands its users nothing
from its inbox (direct messages, broadcasts) while its own lease may have run
out: those entries wait for the next renewal, and are dropped if it answers
that the node was fenced.

A node listens before it has joined; a login that arrives meanwhile waits
for the join (up to a lease) rather than being refused.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from protocol import UserOffline, UserOnline, format_event, username_key
from reactor.cluster.link import UNAVAILABLE, Link, Reply, ThreadLink
from reactor.cluster.loop_link import LoopLink
from reactor.config import ClusterConfig
from reactor.contracts import (
    ClaimResult,
    DeliveryResult,
    PublishResult,
    Recipient,
    RosterEvents,
    Scheduler,
    Session,
    TimerHandle,
    hand_over,
)
from reactor.redis.keys import PREFIX
from reactor.redis.url import without_password
from reactor.whiteboard import MAX_REMEMBERED_NAMES, Whiteboard

S = TypeVar("S", bound=Session)

log = logging.getLogger("reactor")

UNAVAILABLE_REASON = "the chat service is unavailable"
FENCED_REASON = "this server lost contact with the chat, please reconnect"
CONFLICT_REASON = "your name was taken elsewhere while this server was out of contact"
# Extra time, beyond the recipient's own delivery timeout, that a sender waits
# for another node's answer before giving up on it.
ANSWER_GRACE = 2.0


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _stream_id(value: bytes) -> tuple[int, int]:
    ms, _, seq = value.partition(b"-")
    return int(ms), int(seq or 0)


class RemoteUser:
    """A user on another node, as the chat logic sees a recipient."""

    __slots__ = ("board", "name", "node")
    is_open = True
    remote = True  # delivered through Redis, in the order of this node's calls

    def __init__(self, board: ClusterWhiteboard[S], name: str, node: str) -> None:
        self.board = board
        self.name = name
        self.node = node

    def deliver(self, data: bytes, on_result: DeliveryResult) -> None:
        self.board.send_direct(self, data, on_result)

    def fail(self, error: BaseException) -> None:
        log.error("Internal error while sending to %s on node %s", self.name, self.node,
                  exc_info=error)

    def __repr__(self) -> str:
        return f"<RemoteUser {self.name} on {self.node}>"


class _Pending:
    __slots__ = ("name", "node", "on_result", "timer")

    def __init__(self, name: str, node: str, on_result: DeliveryResult,
                 timer: TimerHandle) -> None:
        self.name = name
        self.node = node
        self.on_result = on_result
        self.timer = timer


class _HeldClaim(Generic[S]):
    """A login that arrived before this node joined, waiting for the join."""

    __slots__ = ("name", "on_result", "session", "timer")

    def __init__(self, name: str, session: S, on_result: ClaimResult,
                 timer: TimerHandle) -> None:
        self.name = name
        self.session = session
        self.on_result = on_result
        self.timer = timer


class ClusterWhiteboard(Whiteboard[S]):
    """The cluster's roster (:class:`~reactor.contracts.Roster`).

    (Its URL and packages are checked by the composition root,
    :mod:`reactor.app`, with ``reactor.redis.url.check_url`` before this
    module is imported: the link needs hiredis to be imported at all.)"""

    def __init__(self, config: ClusterConfig, delivery_timeout: float = 5.0,
                 max_remembered: int = MAX_REMEMBERED_NAMES) -> None:
        self.config = config
        self.where = without_password(config.url)  # for log lines
        self.delivery_timeout = delivery_timeout
        self.max_remembered = max_remembered
        self.node_id = self._new_node_id()
        self.epoch = ""
        self.events: RosterEvents | None = None
        self.scheduler: Scheduler | None = None
        self.link: Link | None = None
        # This node's users, and everyone else's.
        self._local: dict[str, S] = {}
        self._local_names: dict[str, str] = {}
        self._remote: dict[str, RemoteUser] = {}
        self._offline: dict[str, str] = {}
        # Answers awaited from other nodes, by our sequence number.
        self._pending: dict[int, _Pending] = {}
        self._next_seq = 0
        # Registration and lease.
        self._registered = False
        self._registering = False
        self._register_again = False
        self._register_sent = 0.0
        self._lease_until = 0.0
        self._renew_timer: TimerHandle | None = None
        self._redis_offset_ms: float | None = None  # Redis ms - local monotonic ms
        self._down_since: float | None = None
        self._ever_up = False
        # The node id of this node's last registration ("" before the first).
        self._ever_registered_as = ""
        # Inbox bookkeeping: presence entries at or before the snapshot are
        # already in it; ``n`` must be contiguous, or entries were trimmed.
        self._snapshot_id: tuple[int, int] = (0, 0)
        self._expected_n: int | None = None
        self._closing = False
        self._keep_missing_until = 0.0
        # The last inbox entry applied (its n), and claims waiting for an n.
        self._applied_n = 0
        self._stream_generation = 0
        self._claims_in_flight: dict[str, int] = {}
        # (inbox n, notice) applied while logins were awaiting their verdict.
        self._recent_presence: deque[tuple[int, bytes]] = deque(maxlen=100_000)
        self._after_inbox: list[tuple[int, Callable[[], None]]] = []
        # Inbox entries waiting for a renewal to confirm the lease.
        self._held_entries: list[tuple[bytes, dict[bytes, bytes]]] = []
        # Logins waiting for this node to join.
        self._held_claims: list[_HeldClaim[S]] = []

    @staticmethod
    def _new_node_id() -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"

    # -- lifecycle ---------------------------------------------------------------

    def start(self, events: RosterEvents, scheduler: Scheduler) -> None:
        self.events = events
        self.scheduler = scheduler
        config = self.config
        loop = scheduler.socket_loop
        if loop is not None:  # an event loop: Redis's sockets join it
            self.link = LoopLink(config.url, config.command_timeout, config.renew_interval,
                                 loop, on_up=self._link_up, on_down=self._link_down,
                                 on_entries=self._entries, together=scheduler.together)
        else:  # threads: the link's own
            self.link = ThreadLink(config.url, config.command_timeout, config.renew_interval,
                                   scheduler.call_soon_threadsafe, on_up=self._link_up,
                                   on_down=self._link_down, on_entries=self._entries,
                                   together=scheduler.together)
        log.info("Joining the chat through Redis at %s as node %s", self.where,
                 self.node_id)
        self.link.start()
        self._renew_timer = scheduler.call_later(self.config.renew_interval, self._renew_tick)

    def close(self) -> None:
        self._closing = True
        if self._renew_timer is not None:
            self._renew_timer.cancel()
        for held in self._held_claims:
            held.timer.cancel()
        self._held_claims.clear()
        if self.link is None:
            return
        if self._registered and self.link.up:
            self._call("leave", (), lambda reply: None)
        self.link.close()

    # -- the Whiteboard interface ---------------------------------------------------

    def unavailable_reason(self) -> str | None:
        if not self._registered or (self.link is not None and not self.link.up):
            return UNAVAILABLE_REASON
        if time.monotonic() > self._lease_until:
            return UNAVAILABLE_REASON
        return None

    def claim(self, name: str, session: S, on_result: ClaimResult) -> None:
        key = username_key(name)
        local = self._local_names.get(key)
        if local is not None:
            on_result(local)
            return
        if not self._registered and not self._closing:
            self._hold_until_joined(name, session, on_result)
            return
        reason = self.unavailable_reason()
        if reason is not None:
            on_result(None, reason)
            return

        stream = self._stream_generation

        def won(written: int) -> None:
            if stream != self._stream_generation:
                # Fenced, or Redis lost its data, since: the claim was made
                # in a state that no longer exists.
                on_result(None, UNAVAILABLE_REASON)
                return
            if key in self._local_names:  # won twice?  The first one holds it.
                on_result(self._local_names[key])
                return
            self._local[key] = session
            self._local_names[key] = name
            self._offline.pop(key, None)
            self._remote.pop(key, None)
            on_result(None)
            # Presence changes Redis made after the claim that this node
            # applied before the claim's reply came back: the newcomer was
            # not yet among its users, so tell it now, after its own notice.
            for n, line in self._recent_presence:
                if n > written:
                    session.send(line)

        def claimed(reply: Reply) -> None:
            self._claims_in_flight[key] -= 1
            if not self._claims_in_flight[key]:
                del self._claims_in_flight[key]
            status = self._status(reply)
            if status == "OK":
                # The claim's reply and the inbox come by different threads:
                # apply what Redis wrote to our inbox before the claim first,
                # so that the newcomer neither hears of users who were already
                # online nor misses anyone in `users`.
                written = int(reply[1])
                if self._applied_n >= written:
                    won(written)
                else:
                    self._after_inbox.append((written, lambda: won(written)))
            elif status == "TAKEN":
                on_result(_text(reply[1]))
            else:
                if status == "UNAVAILABLE" and key not in self._local:
                    # It may have run before its reply was lost: give it
                    # back (now, or through the registration on reconnect).
                    self._call("release", (key,), lambda reply: None)
                on_result(None, UNAVAILABLE_REASON)

        self._claims_in_flight[key] = self._claims_in_flight.get(key, 0) + 1
        self._call("claim", (key, name), claimed, deadline=True)

    def _hold_until_joined(self, name: str, session: S, on_result: ClaimResult) -> None:
        """Not joined yet (just started, or joining again after being fenced):
        the claim waits for the join, up to a lease, then is refused."""
        assert self.scheduler is not None

        def give_up() -> None:
            if held in self._held_claims:
                self._held_claims.remove(held)
                on_result(None, UNAVAILABLE_REASON)

        timer = self.scheduler.call_later(self.config.lease, give_up)
        held = _HeldClaim(name, session, on_result, timer)
        self._held_claims.append(held)

    def _claim_held(self) -> None:
        """Joined: the logins that waited are claimed now, in arrival order."""
        held_claims, self._held_claims = self._held_claims, []
        for held in held_claims:
            held.timer.cancel()
            if held.session.is_open:
                self.claim(held.name, held.session, held.on_result)
            else:
                held.on_result(None, UNAVAILABLE_REASON)

    def release(self, name: str, on_done: Callable[[], None] | None = None) -> None:
        key = username_key(name)
        if self._local.pop(key, None) is None:
            if on_done is not None:
                on_done()
            return
        shown = self._local_names.pop(key)
        self._remember(key, shown)
        if self.link is None or not self._registered:
            if on_done is not None:
                on_done()
            return
        # If Redis is out of reach, the next registration (on reconnect)
        # gives up the names this node no longer has.
        self._call("release", (key,), lambda reply: on_done() if on_done is not None else None)

    def lookup(self, name: str) -> tuple[str, Recipient] | None:
        key = username_key(name)
        session = self._local.get(key)
        if session is not None:
            return self._local_names[key], session
        remote = self._remote.get(key)
        return None if remote is None else (remote.name, remote)

    def surely_taken(self, name: str) -> str | None:
        """Only this node's own users are certain: the mirror of the other
        nodes' users lags behind Redis (a user who has just left on another
        node may still be in it), so for those the claim decides."""
        return self._local_names.get(username_key(name))

    def seen_as(self, name: str) -> str | None:
        key = username_key(name)
        remote = self._remote.get(key)
        if remote is not None:
            return remote.name
        return self._local_names.get(key) or self._offline.get(key)

    def online_sessions(self) -> Iterable[S]:
        return self._local.values()

    def online_names(self) -> list[str]:
        names = [*self._local_names.values(), *(user.name for user in self._remote.values())]
        return sorted(names, key=str.casefold)

    def remote_count(self) -> int:
        return len(self._remote)

    def __len__(self) -> int:
        return len(self._local) + len(self._remote)

    def publish(self, data: bytes, on_result: PublishResult) -> None:
        reason = self.unavailable_reason()
        if reason is not None:
            on_result(reason)
            return

        def published(reply: Reply) -> None:
            on_result(None if self._status(reply) == "OK" else UNAVAILABLE_REASON)

        self._call("broadcast", (data,), published, deadline=True)

    # -- direct messages across nodes ----------------------------------------------

    def send_direct(self, user: RemoteUser, data: bytes, on_result: DeliveryResult) -> None:
        """Hand a direct message to the node that holds ``user``; ``on_result``
        when that node's connection took it (or could not)."""
        reason = self.unavailable_reason()
        if reason is not None:
            on_result(False, reason)
            return
        assert self.scheduler is not None
        self._next_seq += 1
        seq = self._next_seq
        timer = self.scheduler.call_later(
            self.delivery_timeout + ANSWER_GRACE,
            lambda: self._answered(seq, False, f"{user.name}'s server did not answer"),
        )
        self._pending[seq] = _Pending(user.name, user.node, on_result, timer)

        def sent(reply: Reply) -> None:
            status = self._status(reply)
            if status == "OK":
                return  # the answer comes through the inbox
            if status == "OFFLINE" and self._recovering():
                # Redis lost the chat's state and the nodes are registering
                # their users again: not registered yet is not "left".
                self._answered(seq, False, UNAVAILABLE_REASON)
            elif status in ("OFFLINE", "LOCAL"):
                self._answered(seq, False, f"{user.name} left before it could be sent")
            else:
                self._answered(seq, False, UNAVAILABLE_REASON)

        self._call("direct", (username_key(user.name), seq, data), sent, deadline=True)

    def _recovering(self) -> bool:
        """Whether the other nodes may not have registered their users
        again yet, since this node found Redis had lost the chat's state."""
        return time.monotonic() < self._keep_missing_until

    def _answered(self, seq: int, ok: bool, reason: str) -> None:
        pending = self._pending.pop(seq, None)
        if pending is None:
            return  # answered already (late answer after a time-out)
        pending.timer.cancel()
        pending.on_result(ok, reason)

    def _deliver_here(self, origin: str, seq: str, key: str, data: bytes) -> None:
        """A direct message from another node to one of our users."""

        assert self.scheduler is not None
        scheduler = self.scheduler
        give_up = time.monotonic() + self.delivery_timeout + ANSWER_GRACE

        def answer(ok: bool, reason: str) -> None:
            # Sent again while Redis is out of reach, until the sender would
            # have given up: the message is delivered, so the sender must
            # hear it.  (A second copy of an answer is ignored there.)
            def sent(reply: Reply) -> None:
                if reply is UNAVAILABLE and time.monotonic() < give_up and not self._closing:
                    scheduler.call_later(self.config.renew_interval, lambda: answer(ok, reason))

            self._call("answer", (origin, seq, "1" if ok else "0", reason), sent)

        connection = self._local.get(key)
        if connection is None or not connection.is_open:
            shown = self._local_names.get(key) or self._offline.get(key) or key
            answer(False, f"{shown} left before it could be sent")
            return
        hand_over(connection, data, answer)

    # -- the inbox -------------------------------------------------------------------

    def _entries(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """A batch from this node's inbox, in the order Redis wrote it."""
        assert self.scheduler is not None
        if self._held_entries:  # behind those, in order
            held = self._held_entries
            held += entries
            if len(held) > self.config.inbox_max:
                # Bounded as the inbox itself is: the oldest go, as if Redis
                # had trimmed them (the gap in ``n`` reloads the state).
                del held[: len(held) - self.config.inbox_max]
            return
        # This node may have been declared dead since its last renewal (it was
        # frozen, or Redis was out of reach): then what its inbox holds must
        # reach nobody (a sender may have been told its message was not
        # delivered).  Deliveries wait for the next renewal's verdict.
        lease_out = time.monotonic() > self._lease_until
        # Broadcasts and notices back to back go out in one send per user
        # (one entry alone, a quiet moment, goes out at once).
        with self.scheduler.together(len(entries) > 1):
            for index, (entry_id, fields) in enumerate(entries):
                if self._closing:
                    return
                kind = fields.get(b"t", b"")
                if lease_out and kind in (b"dm", b"bc"):
                    self._held_entries = entries[index:]
                    self._renew()
                    break
                n = int(fields.get(b"n", b"0"))
                self._applied_n = n
                if kind == b"hello":
                    self._expected_n = n + 1
                    continue
                if self._expected_n is not None and n != self._expected_n:
                    # Trimmed before we read them (MAXLEN): presence changes may
                    # be missing, so reload the state; the entries that are here
                    # are still good.
                    log.warning("This node's inbox lost %d entries (it fell more than %d behind);"
                                " reloading the chat's state", n - self._expected_n,
                                self.config.inbox_max)
                    self._register()
                if self._expected_n is not None:
                    self._expected_n = n + 1
                try:
                    self._entry(kind, entry_id, fields)
                except Exception:
                    log.exception("Could not handle a cluster event (%r)", kind)
            self._run_after_inbox()

    def _run_after_inbox(self, everything: bool = False) -> None:
        """Answer the claims whose inbox entries have now been applied."""
        if not self._after_inbox:
            return
        ready = [w for w in self._after_inbox if everything or w[0] <= self._applied_n]
        self._after_inbox = [w for w in self._after_inbox if w not in ready]
        for _, answer in ready:
            answer()

    def _entry(self, kind: bytes, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        chat = self.events
        assert chat is not None
        if kind == b"dm":
            self._deliver_here(_text(fields[b"from"]), _text(fields[b"seq"]),
                               _text(fields[b"to"]), fields[b"data"])
        elif kind == b"ack":
            self._answered(int(fields[b"seq"]), fields[b"ok"] == b"1", _text(fields[b"reason"]))
        elif kind == b"bc":
            chat.broadcast_arrived(fields[b"data"])
        elif kind in (b"on", b"off", b"dead"):
            node = _text(fields[b"node"])
            if kind == b"dead":
                self._node_gone(node)
            if _stream_id(entry_id) <= self._snapshot_id:
                return  # the snapshot already holds this change
            if kind == b"on":
                self._remote_online(_text(fields[b"name"]), node)
            else:
                names = _text(fields[b"names"])
                gone = [known for name in (names.split("\n") if names else ())
                        if (known := self._forget_remote(name, node)) is not None]
                if gone:  # announced together (a node's users, at its death)
                    chat.users_offline(gone)

    def _remote_online(self, name: str, node: str) -> None:
        key = username_key(name)
        if key in self._local:
            return  # ours: a stale event from before this node's registration
        known = self._remote.get(key)
        self._remote[key] = RemoteUser(self, name, node)
        self._offline.pop(key, None)
        if known is None:
            assert self.events is not None
            self.events.user_online(name)
            self._note_presence(format_event(UserOnline(name)))

    def _note_presence(self, line: bytes) -> None:
        """Keep a presence notice for the logins whose verdicts are still on
        their way (see ``claim``); nothing is kept while there are none."""
        if self._claims_in_flight or self._after_inbox:
            self._recent_presence.append((self._applied_n, line))
        elif self._recent_presence:
            self._recent_presence.clear()

    def _forget_remote(self, name: str, node: str) -> str | None:
        """``name`` left ``node``: its display name, to announce (None if
        the mirror did not hold it there: a stale or repeated event)."""
        key = username_key(name)
        known = self._remote.get(key)
        if known is None or known.node != node:
            return None
        del self._remote[key]
        self._remember(key, known.name)
        self._note_presence(format_event(UserOffline(known.name)))
        return known.name

    def _node_gone(self, node: str) -> None:
        log.warning("Node %s stopped renewing its lease: its users are offline", node)
        for seq, pending in list(self._pending.items()):
            if pending.node == node:
                self._answered(seq, False, f"{pending.name}'s server stopped")

    def _remember(self, key: str, name: str) -> None:
        self._offline.pop(key, None)
        self._offline[key] = name
        if len(self._offline) > self.max_remembered:
            del self._offline[next(iter(self._offline))]

    # -- Redis up and down, registration, lease ----------------------------------------

    def _link_up(self) -> None:
        if self._down_since is not None:
            log.warning("Redis at %s is reachable again after %.1f s", self.where,
                        time.monotonic() - self._down_since)
            self._down_since = None
        elif not self._ever_up:
            log.info("Connected to Redis at %s", self.where)
        self._ever_up = True
        self._register()

    def _link_down(self, why: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("Lost Redis at %s (%s): logins and messages that need the cluster are"
                        " refused until it is back; retrying", self.where, why)

    def _register(self) -> None:
        """Join (or join again), announcing this node's users; reload the mirror."""
        if self._registering:
            self._register_again = True
            return
        if self.link is None or not self.link.up:
            return  # again when the link is up
        self._registering = True
        self._register_sent = time.monotonic()
        node = self.node_id
        users: list[str] = [str(int(self.config.lease * 1000)),
                            str(len(self._claims_in_flight)), *self._claims_in_flight]
        for key, name in self._local_names.items():
            users += (key, name)
        rejoin = "1" if self._ever_registered_as == node else "0"
        self.link.call("register", node, self.epoch, 0, self.config.inbox_max,
                       self.max_remembered, [rejoin, *users],
                       lambda reply: self._registered_as(node, reply))

    def _registered_as(self, node: str, reply: Reply) -> None:
        self._registering = False
        if self._closing:
            return
        if reply is UNAVAILABLE or not isinstance(reply, list) or node != self.node_id:
            self._register_soon()
            return
        if _text(reply[0]) == "FENCED":
            self._fenced()
            return
        epoch, hello, users, seen, conflicts, hello_n, redis_now = reply
        self._redis_offset_ms = int(redis_now) - time.monotonic() * 1000
        epoch = _text(epoch)
        new_stream = not self._registered or epoch != self.epoch
        if self.epoch and epoch != self.epoch:
            log.warning("Redis lost the chat's state (restarted empty?): this node's %d users"
                        " were registered again", len(self._local))
        lost_state = bool(self.epoch) and epoch != self.epoch
        self.epoch = epoch
        if new_stream:
            assert self.link is not None
            self.link.read_from(f"{PREFIX}inbox:{node}", hello)
            # Reading starts after the hello entry: as if it had been read.
            self._expected_n = int(hello_n) + 1
            self._applied_n = int(hello_n)
            self._recent_presence.clear()
            self._held_entries.clear()  # of the old inbox: the snapshot replaces it
            self._stream_generation += 1
            # Claims waiting for the old inbox: the snapshot holds it all.
            self._run_after_inbox(everything=True)
        self._snapshot_id = _stream_id(hello)
        if lost_state:
            # The other nodes register again at their next renewal: until
            # then (and in any registration meanwhile) their users are kept,
            # rather than announced offline and online again.
            self._keep_missing_until = time.monotonic() + self.config.lease
        keep_missing = self._recovering()
        self._load_snapshot(users, seen, keep_missing=keep_missing,
                            announce=bool(self._ever_registered_as))
        self._ever_registered_as = node
        for name in (_text(n) for n in conflicts):
            self._lost_name(name)
        self._registered = True
        # From when it was sent: Redis's own count started no earlier.
        self._lease_until = self._register_sent + self.config.lease
        self._deliver_held_entries()
        self._claim_held()
        if lost_state:
            # Then look again: whoever has not come back by now is gone.
            assert self.scheduler is not None
            self.scheduler.call_later(self.config.lease + self.config.renew_interval,
                                 self._register)
        if self._register_again:
            self._register_again = False
            self._register()

    def _register_soon(self) -> None:
        if self.scheduler is not None and not self._closing:
            self.scheduler.call_later(self.config.renew_interval, self._register)

    def _load_snapshot(self, users: list[bytes], seen: list[bytes], keep_missing: bool,
                       announce: bool) -> None:
        """Replace the mirror of other nodes' users; with ``announce``, tell our
        users who came and went meanwhile (a registration after an outage)."""
        chat = self.events
        assert chat is not None
        previous = self._remote
        current: dict[str, RemoteUser] = {}
        for i in range(0, len(users), 2):
            key = _text(users[i])
            if not key:
                continue  # the hash's marker (see scripts), not a user
            node, _, name = _text(users[i + 1]).partition("\n")
            if node != self.node_id:
                current[key] = previous.get(key) or RemoteUser(self, name, node)
        self._offline = {}
        for i in range(0, len(seen), 2):
            self._offline[_text(seen[i])] = _text(seen[i + 1])
        if keep_missing:
            for key, user in previous.items():
                current.setdefault(key, user)
        self._remote = current
        if not announce:
            return
        gone = [(key, user.name) for key, user in previous.items() if key not in current]
        for key, name in gone:
            self._remember(key, name)
        if gone:
            chat.users_offline([name for _, name in gone])
        for key, user in current.items():
            if key not in previous:
                chat.user_online(user.name)

    def _lost_name(self, name: str) -> None:
        """Registering again found ``name`` held by another node: ours goes."""
        key = username_key(name)
        connection = self._local.pop(key, None)
        self._local_names.pop(key, None)
        if connection is not None and self.events is not None:
            log.warning("%s was claimed on another node while this one was out of contact;"
                        " disconnecting ours", name)
            self.events.disconnect(connection, CONFLICT_REASON)

    def _renew_tick(self) -> None:
        assert self.scheduler is not None
        self._renew_timer = self.scheduler.call_later(self.config.renew_interval, self._renew_tick)
        self._renew()

    def _renew(self) -> None:
        if not self._registered or self.link is None or not self.link.up:
            return
        sent = time.monotonic()
        node = self.node_id

        def renewed(reply: Reply) -> None:
            if node != self.node_id or self._closing:
                return
            if self._status(reply) == "OK":  # (FENCED and EPOCH are acted on there)
                self._lease_until = sent + self.config.lease
                self._redis_offset_ms = int(reply[1]) - time.monotonic() * 1000
                self._deliver_held_entries()

        self._call("renew", (int(self.config.lease * 1000),), renewed)

    def _deliver_held_entries(self) -> None:
        """The lease is confirmed: the inbox entries held meanwhile go out."""
        if self._held_entries:
            held, self._held_entries = self._held_entries, []
            self._entries(held)

    def _fenced(self) -> None:
        """This node was reaped while it could not renew: its users were
        announced offline and their names may be someone else's now."""
        assert self.events is not None
        log.error("This node was declared dead by the cluster (frozen or cut off for longer"
                  " than its %g s lease); disconnecting its %d users and joining again as a"
                  " new node", self.config.lease, len(self._local))
        victims = list(self._local.values())
        self._held_entries.clear()  # sent to a node declared dead: never delivered
        self._local.clear()
        self._local_names.clear()
        self._registered = False
        for seq in list(self._pending):
            self._answered(seq, False, UNAVAILABLE_REASON)
        for connection in victims:
            self.events.disconnect(connection, FENCED_REASON)
        self.node_id = self._new_node_id()
        self._register()

    # -- helpers ------------------------------------------------------------------------

    def _call(self, script: str, args: tuple[object, ...] | list[object],
              on_reply: Callable[[Reply], None], deadline: bool = False) -> None:
        if self.link is None:
            on_reply(UNAVAILABLE)
            return
        deadline_ms = 0
        if deadline and self._redis_offset_ms is not None:
            # Redis drops the call if it runs after its sender gave up on it
            # (stuck while Redis was paused): half the time-out, so that a
            # call that does run has its reply back before the time-out.
            deadline_ms = int(time.monotonic() * 1000 + self._redis_offset_ms
                              + self.config.command_timeout * 500)
        self.link.call(script, self.node_id, self.epoch, deadline_ms, self.config.inbox_max,
                       self.max_remembered, args, on_reply)

    def _status(self, reply: Reply) -> str:
        """A script's status word; FENCED and EPOCH are acted on here."""
        if reply is UNAVAILABLE or not isinstance(reply, list) or not reply:
            return "UNAVAILABLE"
        status = _text(reply[0])
        if status == "FENCED" and self._registered:
            self._fenced()
        elif status == "EPOCH":
            self._register()
        return status

