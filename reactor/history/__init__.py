"""History and offline messages (``--history on``): the stores behind ``MessageStore``.

=================================  ==========================================================
:class:`~.memory.MemoryHistory`    ring buffers in this process (a single node): lost on restart
:class:`~.sqlite.SQLiteHistory`    a SQLite file beside the accounts database: survives a restart
=================================  ==========================================================

The composition root (:func:`reactor.app.open_history`) picks one.  Both keep
the same retention -- a count per conversation, an age -- and both bound
their memory whatever clients do.  Who may read what is the chat's decision,
not the store's.
"""

from protocol import EVERYONE, username_key


def conversation_key(owner: str, peer: str) -> str:
    """The key of ``owner``'s conversation with ``peer`` (any case), or of the
    broadcasts when ``peer`` is ``everyone``."""
    if peer == EVERYONE:
        return EVERYONE
    # A newline is in no username, so no two pairs share a key.
    return f"{username_key(owner)}\n{username_key(peer)}"


def peer_of(owner: str, sender: str, to: str) -> str:
    """The other party of a message in ``owner``'s conversation."""
    return to if to == EVERYONE or username_key(sender) == username_key(owner) else sender
