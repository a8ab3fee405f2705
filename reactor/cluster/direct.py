"""Direct messages between users of different nodes: handed to the node that
holds the recipient, answered through the sender's inbox."""

from __future__ import annotations

import time

from protocol import username_key
from reactor.cluster.board import UNAVAILABLE_REASON, BoardState, Pending, RemoteUser, S
from reactor.cluster.link import UNAVAILABLE, Reply
from reactor.contracts import DeliveryResult, hand_over

# Extra time, beyond the recipient's own delivery timeout, that a sender waits
# for another node's answer before giving up on it.
ANSWER_GRACE = 2.0


class DirectMessages(BoardState[S]):
    """Sending direct messages to other nodes' users, and delivering theirs."""

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
        self._pending[seq] = Pending(user.name, user.node, on_result, timer)

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
