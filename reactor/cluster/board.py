"""What a cluster node knows and how it calls Redis: the state shared by the
parts of :class:`~reactor.cluster.whiteboard.ClusterWhiteboard`.

The whiteboard is a stack of classes, one per job, each in its own module:
this state and the calls to Redis; direct messages across nodes
(:mod:`reactor.cluster.direct`); the inbox that mirrors Redis
(:mod:`reactor.cluster.inbox`); registration, the lease and fencing
(:mod:`reactor.cluster.lease`); and the roster interface on top
(:mod:`reactor.cluster.whiteboard`).  The few calls that go up the stack are
declared here.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from reactor.cluster.link import UNAVAILABLE, Link, Reply
from reactor.config import ClusterConfig
from reactor.contracts import (
    ClaimResult,
    DeliveryResult,
    RosterEvents,
    Scheduler,
    Session,
    TimerHandle,
)
from reactor.metrics import Metric, counter, gauge
from reactor.redis.url import without_password
from reactor.whiteboard import MAX_REMEMBERED_NAMES

S = TypeVar("S", bound=Session)

log = logging.getLogger("reactor")

UNAVAILABLE_REASON = "the chat service is unavailable"


def as_text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def stream_id(value: bytes) -> tuple[int, int]:
    ms, _, seq = value.partition(b"-")
    return int(ms), int(seq or 0)


class DirectSender(Protocol):
    """Where a remote user's messages go (:mod:`reactor.cluster.direct`)."""

    def send_direct(self, user: RemoteUser, data: bytes, on_result: DeliveryResult) -> None: ...


class RemoteUser:
    """A user on another node, as the chat logic sees a recipient."""

    __slots__ = ("board", "name", "node")
    is_open = True
    remote = True  # delivered through Redis, in the order of this node's calls

    def __init__(self, board: DirectSender, name: str, node: str) -> None:
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


class Pending:
    __slots__ = ("name", "node", "on_result", "timer")

    def __init__(self, name: str, node: str, on_result: DeliveryResult,
                 timer: TimerHandle) -> None:
        self.name = name
        self.node = node
        self.on_result = on_result
        self.timer = timer


class HeldClaim(Generic[S]):
    """A login that arrived before this node joined, waiting for the join."""

    __slots__ = ("name", "on_result", "session", "timer")

    def __init__(self, name: str, session: S, on_result: ClaimResult,
                 timer: TimerHandle) -> None:
        self.name = name
        self.session = session
        self.on_result = on_result
        self.timer = timer


class BoardState(Generic[S]):
    """A node's knowledge of the cluster, and its script calls."""

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
        self._pending: dict[int, Pending] = {}
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
        # The inbox being read, the last entry read from it, and (after a
        # registration that kept reading it from where it was) the hello
        # entry up to which entries only deliver and answer (see Lease).
        self._reading_inbox = ""
        self._read_through: tuple[int, int] = (0, 0)
        self._hello_ahead: tuple[int, int] | None = None
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
        self._held_claims: list[HeldClaim[S]] = []

    @staticmethod
    def _new_node_id() -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"

    def unavailable_reason(self) -> str | None:
        if not self._registered or (self.link is not None and not self.link.up):
            return UNAVAILABLE_REASON
        if time.monotonic() > self._lease_until:
            return UNAVAILABLE_REASON
        return None

    # -- for the admin endpoint (contracts.Monitored) ----------------------------------------

    def unready_reason(self) -> str | None:
        if self.link is not None and not self.link.up:
            return f"Redis at {self.where} is out of reach"
        if not self._registered:
            return "this node has not joined the cluster"
        if time.monotonic() > self._lease_until:
            return "this node's lease in the cluster has run out"
        return None

    def metrics(self) -> list[Metric]:
        lease = self._lease_until - time.monotonic() if self._registered else 0.0
        return [
            gauge("reactor_cluster_joined", "1 while this node is joined to the cluster.",
                  int(self._registered)),
            gauge("reactor_cluster_redis_up", "1 while this node's link to Redis is up.",
                  int(self.link is not None and self.link.up)),
            gauge("reactor_cluster_lease_remaining_seconds",
                  "Seconds left on this node's lease before the others count it dead.",
                  round(lease, 3)),
            gauge("reactor_cluster_lease_age_seconds",
                  "Seconds since this node's lease was last granted or renewed (0 while"
                  " not joined).",
                  round(self.config.lease - lease, 3) if self._registered else 0.0),
            counter("reactor_cluster_redis_calls_total",
                    "Script calls this node made to Redis.",
                    0 if self.link is None else self.link.calls),
            counter("reactor_cluster_redis_call_errors_total",
                    "Script calls to Redis that failed (Redis out of reach or refusing).",
                    0 if self.link is None else self.link.failed_calls),
            gauge("reactor_cluster_deliveries_waiting",
                  "Direct messages to users of other nodes awaiting their answer.",
                  len(self._pending)),
        ]

    # -- calls that go up the stack -------------------------------------------------------

    def _register(self) -> None:
        """Join, or join again (:mod:`reactor.cluster.lease`)."""
        raise NotImplementedError

    def _renew(self) -> None:
        """Renew this node's lease (:mod:`reactor.cluster.lease`)."""
        raise NotImplementedError

    def _fenced(self) -> None:
        """This node was reaped (:mod:`reactor.cluster.lease`)."""
        raise NotImplementedError

    def _claim_held(self) -> None:
        """Joined: the logins that waited (:mod:`reactor.cluster.whiteboard`)."""
        raise NotImplementedError

    # -- calls to Redis -------------------------------------------------------------------

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
        status = as_text(reply[0])
        if status == "FENCED" and self._registered:
            self._fenced()
        elif status == "EPOCH":
            self._register()
        return status
