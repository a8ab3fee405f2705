"""Password hashes: a memory-hard KDF, its parameters stored with every hash.

Every hash is a PHC-style string that names its scheme and parameters, so a
store can hold hashes made with different settings and the settings can be
raised later: a hash below the server's current settings is re-made the next
time its owner logs in (:meth:`PasswordHasher.needs_rehash`).

* ``scrypt`` (the default): ``hashlib.scrypt``, standard library, so the server
  keeps no dependency.  ``$scrypt$ln=15,r=8,p=3$<salt>$<hash>`` (base64
  without padding, as in PHC strings).  The default parameters are one of
  OWASP's equivalent minimums for scrypt: N=2^15, r=8, p=3 -- the same work
  as N=2^17, r=8, p=1 but 32 MiB of memory per hash instead of 128 MiB
  (``p`` lanes run one after another, each in the same 32 MiB), which a
  small server hashing on two workers can afford.
* ``argon2id`` (``pip install reactor-chat[argon2]``): argon2-cffi, OWASP's
  minimum m=19 MiB, t=2, p=1; its own ``$argon2id$v=19$m=...`` strings.

Passwords are normalised to Unicode NFC before hashing (NIST SP 800-63B
5.1.1.2), so an accented letter typed composed or decomposed is the same
password.  Hashes are compared in constant time (``hmac.compare_digest``; argon2-cffi
compares in C).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import unicodedata
from abc import ABC, abstractmethod

SALT_BYTES = 16
KEY_BYTES = 32

# OWASP Password Storage Cheat Sheet: scrypt N=2^17 r=8 p=1, or the
# equivalents N=2^16 p=2, N=2^15 p=3, N=2^14 p=5, N=2^13 p=10 (r=8).
SCRYPT_DEFAULT = {"ln": 15, "r": 8, "p": 3}
ARGON2_DEFAULT = {"m": 19 * 1024, "t": 2, "p": 1}

_SCRYPT_HASH = re.compile(
    r"\$scrypt\$ln=(\d{1,2}),r=(\d{1,3}),p=(\d{1,3})\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)"
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _encoded(password: str) -> bytes:
    return unicodedata.normalize("NFC", password).encode("utf-8")


class PasswordHasher(ABC):
    """Makes hashes in one scheme with fixed parameters; all methods are slow
    (tens to hundreds of milliseconds) and are called on worker threads."""

    spec: str

    @abstractmethod
    def hash(self, password: str) -> str: ...

    @abstractmethod
    def needs_rehash(self, encoded: str) -> bool:
        """True if ``encoded`` was made with another scheme or weaker parameters."""

    def verify(self, encoded: str, password: str) -> bool:
        """Whether ``password`` matches ``encoded``, whichever scheme made it
        (:func:`verify_password`; the server checks through its hasher)."""
        return verify_password(encoded, password)


class ScryptHasher(PasswordHasher):
    def __init__(self, ln: int = 15, r: int = 8, p: int = 3) -> None:
        if not (1 <= ln <= 31 and 1 <= r <= 255 and 1 <= p <= 255):
            raise ValueError(f"scrypt parameters out of range: ln={ln}, r={r}, p={p}")
        self.ln, self.r, self.p = ln, r, p
        self.spec = f"scrypt:ln={ln},r={r},p={p}"

    def hash(self, password: str) -> str:
        salt = os.urandom(SALT_BYTES)
        key = _scrypt(_encoded(password), salt, self.ln, self.r, self.p)
        return f"$scrypt$ln={self.ln},r={self.r},p={self.p}${_b64(salt)}${_b64(key)}"

    def needs_rehash(self, encoded: str) -> bool:
        match = _SCRYPT_HASH.fullmatch(encoded)
        if match is None:
            return True
        ln, r, p = (int(group) for group in match.groups()[:3])
        # Work is about N * r * p; memory N * r.  Never weaken a stored hash.
        return (1 << ln) * r * p < (1 << self.ln) * self.r * self.p


def _scrypt(password: bytes, salt: bytes, ln: int, r: int, p: int) -> bytes:
    n = 1 << ln
    # OpenSSL's default cap is 32 MiB, just too little for N=2^15, r=8.
    maxmem = 128 * r * (n + p + 2) + (1 << 20)
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=KEY_BYTES)


class Argon2Hasher(PasswordHasher):
    def __init__(self, m: int = ARGON2_DEFAULT["m"], t: int = ARGON2_DEFAULT["t"],
                 p: int = ARGON2_DEFAULT["p"]) -> None:
        try:
            import argon2
        except ImportError:
            raise ValueError("argon2id needs the argon2-cffi package "
                             "(pip install 'reactor-chat[argon2]')") from None
        self.m, self.t, self.p = m, t, p
        self._hasher = argon2.PasswordHasher(time_cost=t, memory_cost=m, parallelism=p,
                                             type=argon2.Type.ID)
        self.spec = f"argon2id:m={m},t={t},p={p}"

    def hash(self, password: str) -> str:
        return str(self._hasher.hash(_encoded(password)))

    def needs_rehash(self, encoded: str) -> bool:
        if not encoded.startswith("$argon2id$"):
            return True
        try:
            return bool(self._hasher.check_needs_rehash(encoded))
        except Exception:
            return True


def verify_password(encoded: str, password: str) -> bool:
    """Whether ``password`` matches ``encoded``, whichever scheme made it.

    A hash this server cannot read (an unknown scheme, argon2 without
    argon2-cffi) matches nothing.
    """
    match = _SCRYPT_HASH.fullmatch(encoded)
    if match is not None:
        ln, r, p = (int(group) for group in match.groups()[:3])
        salt, key = _unb64(match.group(4)), _unb64(match.group(5))
        try:
            computed = _scrypt(_encoded(password), salt, ln, r, p)
        except (ValueError, MemoryError):
            return False
        return hmac.compare_digest(computed, key)
    if encoded.startswith("$argon2"):
        try:
            import argon2
        except ImportError:
            return False
        try:
            return bool(argon2.PasswordHasher().verify(encoded, _encoded(password)))
        except argon2.exceptions.VerificationError:
            return False
        except argon2.exceptions.InvalidHashError:
            return False
    return False


def hasher_from_spec(spec: str) -> PasswordHasher:
    """``scrypt``, ``scrypt:ln=15,r=8,p=3``, ``argon2id`` or ``argon2id:m=19456,t=2,p=1``."""
    scheme, _, params = spec.partition(":")
    values: dict[str, int] = {}
    if params:
        for part in params.split(","):
            key, _, value = part.partition("=")
            if not value.isdigit():
                raise ValueError(f"bad password hash parameter {part!r} in {spec!r}")
            values[key.strip()] = int(value)
    try:
        if scheme == "scrypt":
            return ScryptHasher(**{**SCRYPT_DEFAULT, **values})
        if scheme == "argon2id":
            return Argon2Hasher(**{**ARGON2_DEFAULT, **values})
    except TypeError:
        raise ValueError(f"unknown parameter in {spec!r}") from None
    raise ValueError(f"unknown password hash {scheme!r}; choose scrypt or argon2id")


_OWASP_SCRYPT_P = {17: 1, 16: 2, 15: 3, 14: 5, 13: 10}
_OWASP_ARGON2_M = {1: 47104, 2: 19456, 3: 12288, 4: 9216, 5: 7168}


def below_recommended(hasher: PasswordHasher) -> bool:
    """True if ``hasher`` is weaker than OWASP's minimum (for a warning)."""
    if isinstance(hasher, ScryptHasher):
        # OWASP's equivalent minimums (r=8): N=2^17 p=1, 2^16 p=2, 2^15 p=3,
        # 2^14 p=5, 2^13 p=10 -- a table, not a constant N*p.
        least_p = _OWASP_SCRYPT_P.get(min(hasher.ln, 17))
        return hasher.r < 8 or least_p is None or hasher.p < least_p
    if isinstance(hasher, Argon2Hasher):
        # OWASP's equivalent minimums (KiB, iterations): 47104 t=1, 19456 t=2,
        # 12288 t=3, 9216 t=4, 7168 t=5.
        least_m = _OWASP_ARGON2_M[min(max(hasher.t, 1), 5)]
        return hasher.m < least_m
    return False
