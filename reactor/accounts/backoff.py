"""Slowing password guessing down: exponential back-off per key, in bounded memory.

Each wrong password counts against its name and against its address (two
keys).  After the n-th failure in a row a key must wait ``first * 2**(n-1)``
seconds, at most ``most``, before its next password is checked; a key that
has been quiet for ``most`` seconds past its back-off is forgotten, and a
right password clears its name.  At most ``max_keys`` keys are remembered,
the least recently failed forgotten first: an attacker who cycles through
fresh names or addresses can make the server forget, but never grow.
"""

from __future__ import annotations

from collections import OrderedDict


class BackOff:
    def __init__(self, first: float = 1.0, most: float = 300.0,
                 max_keys: int = 10_000) -> None:
        self.first = first
        self.most = most
        self.max_keys = max_keys
        # key -> (failures in a row, until when it must wait)
        self._keys: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def wait(self, key: str, now: float) -> float:
        """Seconds before a password for ``key`` may be checked (0: now)."""
        entry = self._keys.get(key)
        if entry is None:
            return 0.0
        _, until = entry
        if now >= until + self.most:
            del self._keys[key]  # quiet long enough: a fresh start
            return 0.0
        return max(0.0, until - now)

    def failures(self, key: str, now: float) -> int:
        """Failures in a row counted against ``key`` and not yet forgotten."""
        entry = self._keys.get(key)
        if entry is None or now >= entry[1] + self.most:
            return 0
        return entry[0]

    def failed(self, key: str, now: float) -> float:
        """Count a failure; returns the back-off it starts, in seconds."""
        entry = self._keys.pop(key, None)
        failures = 1
        if entry is not None and now < entry[1] + self.most:
            failures = entry[0] + 1
        delay = min(self.most, self.first * 2 ** min(failures - 1, 64))
        self._keys[key] = (failures, now + delay)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return delay

    def succeeded(self, key: str) -> None:
        self._keys.pop(key, None)

    def adopt(self, key: str, now: float, wait: float) -> None:
        """Wait at least ``wait`` more seconds for ``key``: a back-off that other
        servers of a cluster counted (the store shares them)."""
        if wait <= 0:
            return
        failures, until = self._keys.pop(key, (0, now))
        self._keys[key] = (failures, max(until, now + wait))
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
