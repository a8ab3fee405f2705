"""This node's inbox: the stream in which Redis wrote, in order, everything
other nodes send this node (presence, direct messages and their answers,
broadcasts), applied to the mirror of the cluster and handed to the chat."""

from __future__ import annotations

import time

from protocol import UserOffline, UserOnline, format_event, username_key
from reactor.cluster.board import RemoteUser, S, as_text, log, stream_id
from reactor.cluster.direct import DirectMessages


class Inbox(DirectMessages[S]):
    """Reading the inbox into the mirror of the other nodes' users."""

    def _entries(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """A batch from this node's inbox, in the order Redis wrote it."""
        assert self.scheduler is not None
        if entries:
            self._read_through = max(self._read_through, stream_id(entries[-1][0]))
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
                if self._hello_ahead is not None:
                    if stream_id(entry_id) < self._hello_ahead:
                        # Written before this node registered again: presence
                        # is in the snapshot, the rest is handled as usual.
                        self._handle(kind, entry_id, fields)
                        continue
                    self._hello_ahead = None
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
                self._handle(kind, entry_id, fields)
            self._run_after_inbox()

    def _handle(self, kind: bytes, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        """One entry; a bug in its handling is that entry's alone."""
        try:
            self._entry(kind, entry_id, fields)
        except Exception:
            log.exception("Could not handle a cluster event (%r)", kind)

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
            self._deliver_here(as_text(fields[b"from"]), as_text(fields[b"seq"]),
                               as_text(fields[b"to"]), fields[b"data"])
        elif kind == b"ack":
            self._answered(int(fields[b"seq"]), fields[b"ok"] == b"1", as_text(fields[b"reason"]))
        elif kind == b"bc":
            chat.broadcast_arrived(fields[b"data"])
        elif kind in (b"on", b"off", b"dead"):
            node = as_text(fields[b"node"])
            if kind == b"dead":
                self._node_gone(node)
            if stream_id(entry_id) <= self._snapshot_id:
                return  # the snapshot already holds this change
            if kind == b"on":
                self._remote_online(as_text(fields[b"name"]), node)
            else:
                names = as_text(fields[b"names"])
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
