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


def conversation_key(one: str, other: str) -> str:
    """The one key of the conversation between ``one`` and ``other`` (either
    order, any case), or of the broadcasts when either is ``everyone``."""
    if one == EVERYONE or other == EVERYONE:
        return EVERYONE
    first, second = sorted((username_key(one), username_key(other)))
    # A newline is in no username, so no two pairs share a key.
    return f"{first}\n{second}"
