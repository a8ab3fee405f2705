"""Registered names in Redis, so that every node of a cluster agrees on them.

``--cluster URL --accounts`` (or ``--accounts redis://...`` on any server)
keeps the accounts beside the cluster's state, under the same hash tag
(one slot on Redis Cluster).  Keys (``P`` is ``{chat}:``):

``P accounts``        HASH name key (casefolded) -> JSON ``{"name", "hash",
                      "created", "updated"}``: one field per account, so that
                      registering is one ``HSETNX`` (of two nodes racing to
                      register one name, exactly one wins).
``P operators``       SET of the operators' name keys.
``P sanctions``       HASH ``kind:target`` -> JSON of a
                      :class:`~reactor.accounts.store.Sanction`: the bans and
                      mutes in force, pruned as they expire.
``P accounts:kept``   a marker, set when a server first opens the store.
``P backoff:<key>``   HASH {n, until, checking}: the password back-off of a
                      name (``name:<key>``) or an address (``address:<host>``),
                      and the turn of the one check under way for it, shared
                      by every node; expires once quiet.

**Fail closed when Redis forgets.**  A Redis that restarts without
persistence comes back empty, and an empty store would make every
registered name open again: anyone could log in as Alice, without a
password, and read what her friends send her.  So a lookup also checks the
marker, and a store whose marker is gone answers :class:`StoreUnavailable`
(the client is told the account store is unavailable, and nobody logs in
under any name) until a server (or ``python -m reactor.accounts``) opens it
again, which says that the accounts are new or lost, and sets the marker.
At start the server also warns if Redis keeps nothing on disk.

The methods block (redis-py, with timeouts); they run on the accounts worker
threads, never on the chat thread, like SQLite's.  redis-py's client is
safe to share between threads (a pool of connections).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

from protocol import username_key
from reactor.accounts.store import Account, AccountStore, Sanction, StoreUnavailable
from reactor.redis.keys import PREFIX
from reactor.redis.url import redis_client, without_password

ACCOUNTS = PREFIX + "accounts"
OPERATORS = PREFIX + "operators"
SANCTIONS = PREFIX + "sanctions"
KEPT = PREFIX + "accounts:kept"
BACKOFF = PREFIX + "backoff:"
TIMEOUT = 2.0  # seconds a store call may take before the store counts as unavailable
LOST = ("the registered names are gone from Redis (restarted without persistence?); "
        "logins are refused until an operator restores them, or starts a server on it "
        "again to begin with none")

# KEYS: accounts, kept.  ARGV: name key.  A missing marker is an error, so that
# a lookup cannot mistake lost data for an unregistered name.
_GET = """
if redis.call('EXISTS', KEYS[2]) == 0 then return redis.error_reply('LOST') end
return redis.call('HGET', KEYS[1], ARGV[1])
"""

# ARGV: name key, new hash, now.  Keeps the spelling and the creation time.
_SET_PASSWORD = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
local account = cjson.decode(value)
account.hash = ARGV[2]
account.updated = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(account))
return 1
"""


# Back-off shared by the nodes (see reactor.accounts.backoff for the rule):
# one small hash per key, ``P backoff:<key>`` = {n: failures in a row, until:
# Redis ms}, expiring once quiet for ``most`` past its back-off -- so what it
# holds is bounded by the failures of the last 2 x most seconds, and every
# failure costs its server a memory-hard hash first.  Redis's own clock, so
# that the hosts' clocks do not matter.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: the back-off hashes.  Returns each one's remaining wait, in ms.
_WAITS = _NOW + """
local waits = {}
for i, key in ipairs(KEYS) do
  local ends = tonumber(redis.call('HGET', key, 'until') or 0)
  waits[i] = math.max(0, ends - now)
end
return waits
"""

# ARGV: hold, retry (ms).  A turn is the field ``checking`` (until when, Redis
# ms) on every key at once, or on none: returns all zeros if taken, else each
# key's wait in ms (its back-off, or at most ``retry`` while checked elsewhere).
_TURN = _NOW + """
local hold, retry = tonumber(ARGV[1]), tonumber(ARGV[2])
local waits, free = {}, true
for i, key in ipairs(KEYS) do
  local ends = tonumber(redis.call('HGET', key, 'until') or 0)
  local checking = tonumber(redis.call('HGET', key, 'checking') or 0)
  local wait = math.max(0, ends - now)
  if checking > now then wait = math.max(wait, math.min(retry, checking - now)) end
  waits[i] = wait
  if wait > 0 then free = false end
end
if free then
  for i, key in ipairs(KEYS) do
    redis.call('HSET', key, 'checking', now + hold)
    if redis.call('PTTL', key) < hold then redis.call('PEXPIRE', key, hold) end
  end
end
return waits
"""

# ARGV: first, most (ms).  Returns each key's new back-off, in ms.
_FAILED = _NOW + """
local first, most = tonumber(ARGV[1]), tonumber(ARGV[2])
local delays = {}
for i, key in ipairs(KEYS) do
  local n = tonumber(redis.call('HGET', key, 'n') or 0)
  local ends = tonumber(redis.call('HGET', key, 'until') or 0)
  if now >= ends + most then n = 0 end
  n = n + 1
  local delay = math.min(most, first * 2 ^ math.min(n - 1, 64))
  redis.call('HSET', key, 'n', n, 'until', now + delay)
  redis.call('PEXPIRE', key, math.ceil(delay + most) + 1)
  delays[i] = math.floor(delay)
end
return delays
"""


def _account(value: bytes | str | None) -> Account | None:
    if value is None:
        return None
    fields = json.loads(value)
    return Account(fields["name"], fields["hash"], float(fields["created"]),
                   float(fields["updated"]))


class RedisAccountStore(AccountStore):
    def __init__(self, url: str, timeout: float = TIMEOUT) -> None:
        self.url = url
        self._redis = redis_client(url, timeout, "--accounts")  # LinkError: a bad URL
        self._warnings: list[str] = []
        try:
            self._get = self._redis.register_script(_GET)
            self._set_password = self._redis.register_script(_SET_PASSWORD)
            self._waits = self._redis.register_script(_WAITS)
            self._failed = self._redis.register_script(_FAILED)
            self._turn = self._redis.register_script(_TURN)
            if self._redis.set(KEPT, "1", nx=True):
                self._warnings.append(
                    f"Registered names in Redis at {without_password(url)}: none kept "
                    f"before (new, or Redis lost them); starting with "
                    f"{self._redis.hlen(ACCOUNTS)}")
            if not self._persistent():
                self._warnings.append(
                    f"Redis at {without_password(url)} keeps nothing on disk (appendonly "
                    "no, save ''): a restart loses every registered name; turn on appendonly")
        except Exception as error:
            self.close()
            raise StoreUnavailable(f"cannot use the accounts in Redis at "
                                   f"{without_password(url)}: {_reason(error)}") from None

    def _persistent(self) -> bool:
        try:
            config = self._redis.config_get("appendonly") | self._redis.config_get("save")
        except Exception:  # CONFIG is often renamed away on managed Redis: cannot tell
            return True
        return config.get("appendonly") == "yes" or bool(config.get("save"))

    def warnings(self) -> list[str]:
        return list(self._warnings)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Any failure of a call as :class:`StoreUnavailable`, in one line."""
        try:
            yield
        except Exception as error:
            if str(error) == "LOST":
                raise StoreUnavailable(LOST) from None
            raise StoreUnavailable(
                f"Redis at {without_password(self.url)}: {_reason(error)}") from None

    def get(self, name: str) -> Account | None:
        with self._errors():
            value = self._get(keys=[ACCOUNTS, KEPT], args=[username_key(name)])
        return _account(value)

    def create(self, name: str, password_hash: str) -> bool:
        now = time.time()
        value = json.dumps({"name": name, "hash": password_hash, "created": now,
                            "updated": now})
        with self._errors():
            return bool(self._redis.hsetnx(ACCOUNTS, username_key(name), value))

    def set_password(self, name: str, password_hash: str) -> bool:
        with self._errors():
            return bool(self._set_password(
                keys=[ACCOUNTS], args=[username_key(name), password_hash, repr(time.time())]))

    def remove(self, name: str) -> bool:
        with self._errors():
            self._redis.srem(OPERATORS, username_key(name))
            return bool(self._redis.hdel(ACCOUNTS, username_key(name)))

    def set_operator(self, name: str, operator: bool) -> bool:
        key = username_key(name)
        with self._errors():
            if not self._redis.hexists(ACCOUNTS, key):
                return False
            if operator:
                self._redis.sadd(OPERATORS, key)
            else:
                self._redis.srem(OPERATORS, key)
        return True

    def is_operator(self, name: str) -> bool:
        key = username_key(name)
        with self._errors():
            return bool(self._redis.sismember(OPERATORS, key)
                        and self._redis.hexists(ACCOUNTS, key))

    def operators(self) -> list[str]:
        with self._errors():
            keys = self._redis.smembers(OPERATORS)
        return sorted(key.decode() if isinstance(key, bytes) else key for key in keys)

    def add_sanction(self, sanction: Sanction) -> None:
        value = json.dumps({"kind": sanction.kind, "target": sanction.target,
                            "shown": sanction.shown, "by": sanction.by,
                            "reason": sanction.reason, "created": sanction.created,
                            "until": sanction.until})
        with self._errors():
            self._redis.hset(SANCTIONS, f"{sanction.kind}:{sanction.target}", value)

    def remove_sanction(self, kind: str, target: str) -> bool:
        with self._errors():
            return bool(self._redis.hdel(SANCTIONS, f"{kind}:{target}"))

    def sanctions(self, now: float, prune: bool = False) -> list[Sanction]:
        with self._errors():
            fields: dict[bytes, bytes] = self._redis.hgetall(SANCTIONS)
        found: list[Sanction] = []
        past: list[bytes] = []
        for field_name in sorted(fields):
            sanction = Sanction(**json.loads(fields[field_name]))
            if sanction.active(now):
                found.append(sanction)
            else:
                past.append(field_name)
        if past and prune:
            with self._errors():
                self._redis.hdel(SANCTIONS, *past)
        return found

    def accounts(self) -> list[Account]:
        with self._errors():
            fields: dict[bytes, bytes] = self._redis.hgetall(ACCOUNTS)
        # Sorted by name key, as SQLite's ORDER BY key (UTF-8 bytes sort as code points).
        found = [_account(fields[key]) for key in sorted(fields)]
        return [account for account in found if account is not None]

    def shared_waits(self, keys: list[str]) -> list[float]:
        with self._errors():
            waits = self._waits(keys=[BACKOFF + key for key in keys])
        return [int(ms) / 1000 for ms in waits]

    def shared_turn(self, keys: list[str], hold: float, retry: float) -> list[float]:
        with self._errors():
            waits = self._turn(keys=[BACKOFF + key for key in keys],
                               args=[round(hold * 1000), max(1, round(retry * 1000))])
        return [int(ms) / 1000 for ms in waits]

    def shared_release(self, keys: list[str]) -> None:
        with self._errors(), self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hdel(BACKOFF + key, "checking")
            pipe.execute()

    def shared_failure(self, keys: list[str], first: float, most: float) -> list[float]:
        with self._errors():
            delays = self._failed(keys=[BACKOFF + key for key in keys],
                                  args=[round(first * 1000), round(most * 1000)])
        return [int(ms) / 1000 for ms in delays]

    def shared_success(self, key: str) -> None:
        with self._errors():
            self._redis.delete(BACKOFF + key)

    def close(self) -> None:
        self._redis.close()


def _reason(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
