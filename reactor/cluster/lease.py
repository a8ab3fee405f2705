"""Joining the cluster and staying in it: registration (again after an
outage, or after Redis lost the chat's state), the lease renewed every lease
/ 6, and fencing when the node learns it was reaped."""

from __future__ import annotations

import time

from protocol import username_key
from reactor.cluster.board import UNAVAILABLE_REASON, RemoteUser, S, as_text, log, stream_id
from reactor.cluster.inbox import Inbox
from reactor.cluster.link import UNAVAILABLE, Reply
from reactor.redis.keys import PREFIX

FENCED_REASON = "this server lost contact with the chat, please reconnect"
CONFLICT_REASON = "your name was taken elsewhere while this server was out of contact"


class Lease(Inbox[S]):
    """Registration, the lease and fencing."""

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
        if as_text(reply[0]) == "FENCED":
            self._fenced()
            return
        epoch, hello, users, seen, conflicts, hello_n, redis_now = reply
        self._redis_offset_ms = int(redis_now) - time.monotonic() * 1000
        epoch = as_text(epoch)
        new_stream = not self._registered or epoch != self.epoch
        if self.epoch and epoch != self.epoch:
            log.warning("Redis lost the chat's state (restarted empty?): this node's %d users"
                        " were registered again", len(self._local))
        lost_state = bool(self.epoch) and epoch != self.epoch
        self.epoch = epoch
        hello_id = stream_id(hello)
        if new_stream:
            assert self.link is not None
            inbox = f"{PREFIX}inbox:{node}"
            if inbox != self._reading_inbox:
                self._reading_inbox = inbox
                self.link.read_from(inbox, hello)
                # Reading starts after the hello entry: as if it had been read.
                self._expected_n = int(hello_n) + 1
                self._applied_n = int(hello_n)
                self._hello_ahead = None
            elif self._read_through < hello_id:
                # The same inbox (Redis lost the chat's state), read on from
                # where it was, not from the hello: the answers and messages
                # written before it still count (their senders wait for
                # them).  Its numbering starts again at the hello.
                self._expected_n = None
                self._applied_n = int(hello_n)
                self._hello_ahead = hello_id
            # (Else the reading is past the hello already: it goes on.)
            self._recent_presence.clear()
            self._held_entries.clear()  # of the old inbox: the snapshot replaces it
            self._stream_generation += 1
            # Claims waiting for the old inbox: the snapshot holds it all.
            self._run_after_inbox(everything=True)
        self._snapshot_id = hello_id
        if lost_state:
            # The other nodes register again at their next renewal: until
            # then (and in any registration meanwhile) their users are kept,
            # rather than announced offline and online again.
            self._keep_missing_until = time.monotonic() + self.config.lease
        keep_missing = self._recovering()
        self._load_snapshot(users, seen, keep_missing=keep_missing,
                            announce=bool(self._ever_registered_as))
        self._ever_registered_as = node
        for name in (as_text(n) for n in conflicts):
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
            key = as_text(users[i])
            if not key:
                continue  # the hash's marker (see scripts), not a user
            node, _, name = as_text(users[i + 1]).partition("\n")
            if node != self.node_id:
                current[key] = previous.get(key) or RemoteUser(self, name, node)
        self._offline = {}
        for i in range(0, len(seen), 2):
            self._offline[as_text(seen[i])] = as_text(seen[i + 1])
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
