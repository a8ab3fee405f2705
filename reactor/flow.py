"""Flood control: token buckets that decide when a client's next line is read.

Nothing is ever dropped for going too fast.  A client over its rate simply has
its next line wait (and, behind it, the kernel's receive buffer and then the
client's own send buffer: TCP backpressure), the way IRC servers meter
commands (ngircd's penalty, ergo's fakelag).  Three meters, with defaults that
a person typing never meets:

* lines per connection -- any command costs one;
* deliveries per connection -- a broadcast costs one per recipient, so a
  flooder's share of the server's fan-out work is bounded whatever the
  number of users online;
* logins per address -- every login attempt costs one, so that a login/bye
  loop cannot turn into hundreds of thousands of presence lines a second.

A bucket may go into debt: the cost of a broadcast is charged after it was
sent, and the sender's next line waits until the debt is paid.  Buckets take
the time as an argument, so that they can be tested with plain numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


class TokenBucket:
    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def _refill(self, now: float) -> None:
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.updated = now

    def charge(self, cost: float, now: float) -> None:
        self._refill(now)
        self.tokens -= cost

    def wait(self, now: float) -> float:
        """Seconds until the bucket is out of debt (0 if it can spend now)."""
        self._refill(now)
        return 0.0 if self.tokens > 0 else (1 - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


@dataclass(frozen=True, slots=True)
class FloodLimits:
    """Rates per second and bursts; ``enabled=False`` turns every meter off."""

    enabled: bool = True
    lines_per_second: float = 50.0
    lines_burst: int = 500
    deliveries_per_second: float = 20_000.0
    # A burst is one pass of fan-out for everybody else: it bounds how long
    # one client's broadcasts can hold the loop before the others are served
    # (what a delivery costs is measured in bench/README.md).
    deliveries_burst: int = 10_000
    logins_per_second: float = 20.0
    logins_burst: int = 1_000


class LoginMeters:
    """The logins-per-address meter: one bucket per address that logged in
    lately, forgotten once full again, so that the table holds only the
    addresses still paying off their logins."""

    def __init__(self, limits: FloodLimits) -> None:
        self._limits = limits
        self._buckets: dict[str, TokenBucket] = {}

    def wait(self, host: str, now: float) -> float:
        """Seconds before a login line from ``host`` may be handled; charges
        the address when it may be handled now."""
        bucket = self._buckets.get(host)
        if bucket is None:
            limits = self._limits
            bucket = TokenBucket(limits.logins_per_second, limits.logins_burst, now)
            self._buckets[host] = bucket
        wait = bucket.wait(now)
        if not wait:
            bucket.charge(1, now)
        return wait

    def forget_full(self, now: float) -> None:
        """Drop the buckets that are full again (their addresses owe nothing)."""
        for host in [h for h, b in self._buckets.items() if b.full(now)]:
            del self._buckets[host]
