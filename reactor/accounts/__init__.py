"""Registered names (``--accounts PATH``): a store, password hashes, back-off, and the chat side.

* :mod:`reactor.accounts.store` -- :class:`AccountStore`, the narrow interface,
  and :class:`SQLiteAccountStore`;
* :mod:`reactor.accounts.hashing` -- scrypt (standard library) or argon2id,
  PHC-style strings that carry their parameters;
* :mod:`reactor.accounts.backoff` -- exponential back-off per name and per
  address, in bounded memory;
* :mod:`reactor.accounts.turns` -- one password check at a time per name and
  per address, taken before it is hashed;
* :mod:`reactor.accounts.workers` -- look-ups on threads of their own, hashes
  in a bounded queue, fair per address;
* :mod:`reactor.accounts.service` -- :class:`Accounts`, what the chat does with
  them (the password step of a login, ``register``, ``password``);
* ``python -m reactor.accounts`` -- the operator's list/remove/reset.
"""

from reactor.accounts.backoff import BackOff
from reactor.accounts.hashing import (
    PasswordHasher,
    ScryptHasher,
    hasher_from_spec,
    verify_password,
)
from reactor.accounts.service import Accounts
from reactor.accounts.store import Account, AccountStore, SQLiteAccountStore, StoreUnavailable

__all__ = [
    "Account", "AccountStore", "Accounts", "BackOff", "PasswordHasher", "SQLiteAccountStore",
    "ScryptHasher", "StoreUnavailable", "hasher_from_spec", "verify_password",
]
