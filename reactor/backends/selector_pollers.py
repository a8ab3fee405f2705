"""The select backend's pollers: readiness of descriptors, by epoll or ``selectors``.

The select loop and its transports ask a poller to register, modify and
unregister a socket, and the loop asks it to ``poll``, giving ``(fd, epoll
events)`` whose fd it looks up in ``data``; ``_Poller`` is the one it
builds.  Apart from the loop because they know descriptors and event bits
only: nothing of connections or the chat.
The names keep their underscore: they are the select backend's own (its
server and transports import them), not the package's.
"""

from __future__ import annotations

import select
import selectors
import socket

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


# Readiness bits as epoll reports them (and as _SelectorsPoller translates).
_IN = 1  # select.EPOLLIN
_OUT = 4  # select.EPOLLOUT
# An error or a hangup counts as both readable and writable (selectors' rule).
_READABLE = ~_OUT
_WRITABLE = ~_IN


class _EpollPoller:
    """What the loop needs of ``selectors.EpollSelector``: register, modify
    and unregister as there, and ``poll`` giving ``(fd, epoll events)``, whose
    fd the loop looks up in ``data``.

    ``selectors`` builds a key object per registration and looks each ready
    descriptor's key up through two method calls, once per pass -- with a
    sender writing a line or two at a time, once or twice per direct
    message; ``epoll.poll`` and a dict do without (bench/profile_fanout.py
    counts the difference).
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self.poll = self._epoll.poll  # (timeout in s, -1 for none; max events)
        self.data: dict[int, object] = {}  # fd -> what the loop is given

    def register(self, fileobj: socket.socket, events: int, data: object = None) -> None:
        fd = fileobj.fileno()
        if fd in self.data:
            raise KeyError(f"{fileobj!r} is already registered")
        self._epoll.register(fd, _MASKS[events])
        self.data[fd] = data

    def modify(self, fileobj: socket.socket, events: int, data: object = None) -> None:
        fd = fileobj.fileno()
        if fd not in self.data:
            raise KeyError(f"{fileobj!r} is not registered")
        self._epoll.modify(fd, _MASKS[events])
        self.data[fd] = data

    def unregister(self, fileobj: socket.socket) -> None:
        fd = fileobj.fileno()
        del self.data[fd]  # KeyError if not registered, as selectors raises
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass  # as selectors: the descriptor is already gone

    def close(self) -> None:
        self._epoll.close()
        self.data.clear()


class _SelectorsPoller:
    """The same interface over ``selectors``, where there is no epoll."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self.data: dict[int, object] = {}
        self.modify = self._selector.modify
        self.close = self._selector.close

    def register(self, fileobj: socket.socket, events: int, data: object = None) -> None:
        self._selector.register(fileobj, events, data)
        self.data[fileobj.fileno()] = data

    def unregister(self, fileobj: socket.socket) -> None:
        self._selector.unregister(fileobj)
        del self.data[fileobj.fileno()]

    def poll(self, timeout: float, maxevents: int) -> list[tuple[int, int]]:
        ready = self._selector.select(None if timeout < 0 else timeout)
        return [(key.fd, (_IN if events & _READ else 0) | (_OUT if events & _WRITE else 0))
                for key, events in ready]


_MASKS = {_READ: _IN, _WRITE: _OUT, _READ | _WRITE: _IN | _OUT}
if hasattr(select, "epoll"):
    assert (select.EPOLLIN, select.EPOLLOUT) == (_IN, _OUT)
    _Poller: type[_EpollPoller] | type[_SelectorsPoller] = _EpollPoller
else:
    _Poller = _SelectorsPoller
