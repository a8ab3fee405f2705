"""I/O backends.  Each only moves bytes between sockets and :class:`ChatService`."""
