"""Reaching Redis from a URL: redis-py's client, the URL checks, and URLs fit
for a log line.

Kept apart from the cluster's link (:mod:`reactor.cluster.link`), which needs
the ``[cluster]`` extra (redis-py and hiredis): the server imports this at
start to check its command line, and must start without the extra when it is
not asked to join a cluster (the single-node server uses the standard library
alone).  redis-py is imported only when a client is made.
"""

from __future__ import annotations

from typing import Any


class LinkError(Exception):
    """The cluster cannot be used as configured (a bad URL, no redis package)."""


def redis_client(url: str, timeout: float, option: str = "--cluster", **settings: Any) -> Any:
    """A redis-py client for ``url`` that never retries on its own (a retried
    script could run twice); ``option`` names the flag in error messages."""
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        raise LinkError(f"{option} needs the redis package: pip install "
                        "'reactor-chat[cluster]'") from None
    try:
        return redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0, **settings,
        )
    except ValueError as error:
        raise LinkError(f"{option}: {error}") from None


def is_redis_url(text: str) -> bool:
    return text.startswith(("redis://", "rediss://", "unix://"))


def without_password(url: str) -> str:
    """``url`` fit for a log line: a password in it (``redis://:secret@host``) left out."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url


def check_url(url: str) -> None:
    """Raise LinkError if ``url`` cannot be a ``--cluster``: not a Redis URL,
    or the packages the link needs not installed (redis-py, and hiredis,
    through which it speaks RESP).  Called before the link is imported."""
    if not is_redis_url(url):
        raise LinkError(f"--cluster: {url!r} is not a Redis URL "
                        "(redis://HOST:PORT, rediss://HOST:PORT for TLS, or unix://PATH)")
    redis_client(url, 1.0).close()
    try:
        import hiredis  # noqa: F401
    except ImportError:
        raise LinkError("--cluster needs the hiredis package: pip install "
                        "'reactor-chat[cluster]'") from None
