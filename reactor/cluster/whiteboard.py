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

from collections.abc import Callable, Iterable

from protocol import username_key
from reactor.cluster.board import UNAVAILABLE_REASON, HeldClaim, S, as_text, log
from reactor.cluster.lease import Lease
from reactor.cluster.link import Reply, ThreadLink
from reactor.cluster.loop_link import LoopLink
from reactor.contracts import ClaimResult, PublishResult, Recipient, RosterEvents, Scheduler
from reactor.whiteboard import Whiteboard

__all__ = ["ClusterWhiteboard"]


class ClusterWhiteboard(Lease[S], Whiteboard[S]):
    """The cluster's roster (:class:`~reactor.contracts.Roster`).

    (Its URL and packages are checked by the composition root,
    :mod:`reactor.app`, with ``reactor.redis.url.check_url`` before this
    module is imported: the link needs hiredis to be imported at all.)"""

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
                on_result(as_text(reply[1]))
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
        held = HeldClaim(name, session, on_result, timer)
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
