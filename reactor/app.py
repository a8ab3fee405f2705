"""The composition root: the one place that builds the server from its configuration.

From a :class:`~reactor.config.ServerConfig` it builds, in this order, what
the chat is given -- the roster (in memory, or the cluster's over Redis), the
login step (registered names, ``--accounts``) -- then the chat service, then
the backend's server around it, and hands each only what it needs::

    roster  = make_roster(config)                # contracts.Roster
    login   = open_accounts(config.accounts)     # contracts.LoginStep, or None
    history = open_history(config)               # contracts.MessageStore, or None
    chat    = ChatService(config, roster, login, history=history)
    site    = make_site(config)                  # the --web-port page, or None
    server  = server_class(backend)(config, chat, web=site, **options)

Nothing else in the server constructs a feature.  The optional packages
(redis-py, hiredis; websockets) are imported here, lazily, and only when the
configuration asks for Redis (or a web port): the single-node server runs
on the standard library alone.  Everything that can be refused (a bad Redis
URL, a missing package, an accounts file that cannot be opened, a busy
port) is refused here, before anything is served, and whatever was opened
is closed again.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import replace

from reactor.accounts.hashing import hasher_from_spec
from reactor.accounts.service import Accounts
from reactor.accounts.store import AccountStore, SQLiteAccountStore
from reactor.admin.endpoint import AdminEndpoint
from reactor.backends import DEFAULT_BACKEND, server_class
from reactor.backends.base import Server
from reactor.chat import ChatService
from reactor.config import AccountsConfig, HistoryConfig, ServerConfig
from reactor.connection import Connection
from reactor.contracts import LoginStep, MessageStore, Monitored, Roster
from reactor.history.memory import MemoryHistory
from reactor.history.sqlite import SQLiteHistory, history_path
from reactor.redis.url import check_url, is_redis_url
from reactor.sockets import open_listener
from reactor.tls import TLSCertificate
from reactor.version import version
from reactor.web import require_websockets
from reactor.web.http import OriginRule, Site
from reactor.whiteboard import MemoryWhiteboard

log = logging.getLogger("reactor")


def make_roster(config: ServerConfig) -> Roster[Connection]:
    """The roster the configuration asks for: this process's own, or the
    cluster's (``--cluster URL``; raises LinkError for a bad URL or a
    missing package, before anything is bound).  It talks to Redis only once
    the chat is served."""
    if config.cluster is None:
        return MemoryWhiteboard()
    # Checked before importing the cluster's modules, which need the packages.
    check_url(config.cluster.url)
    from reactor.cluster.whiteboard import ClusterWhiteboard

    return ClusterWhiteboard(config.cluster, config.delivery_timeout)


def open_store(location: str) -> AccountStore:
    """The account store at ``location``: a Redis URL (``redis://``,
    ``rediss://``, ``unix://``), or else a SQLite file.  Raises
    StoreUnavailable, or LinkError for a bad URL or a missing redis package."""
    if is_redis_url(location):
        from reactor.accounts.redis_store import RedisAccountStore

        return RedisAccountStore(location)
    return SQLiteAccountStore(location)


def open_accounts(settings: AccountsConfig | None) -> Accounts | None:
    """The login step for registered names, if the configuration has them
    (raises ValueError for a bad hash spec, before any store is opened;
    StoreUnavailable or LinkError for a store that cannot be)."""
    if settings is None:
        return None
    hasher = hasher_from_spec(settings.password_hash)
    store = open_store(settings.path)
    for warning in store.warnings():
        log.warning("%s", warning)
    return Accounts(settings, store, hasher)


def open_history(config: ServerConfig) -> MessageStore | None:
    """The history store, if the configuration keeps history: the cluster's
    Redis (every node reads the same history), a Redis holding the accounts,
    a SQLite file beside a SQLite accounts database (it survives a restart),
    else memory.  Raises LinkError for a missing redis package, and
    sqlite3.Error for a file that cannot be opened."""
    if config.history is None:
        return None
    location = _redis_location(config)
    if location is not None:
        from reactor.history.redis_store import RedisHistory

        return RedisHistory(location, config.history)
    if config.accounts is not None:
        return SQLiteHistory(history_path(config.accounts.path), config.history)
    return MemoryHistory(config.history)


def _redis_location(config: ServerConfig) -> str | None:
    if config.cluster is not None:
        return config.cluster.url
    if config.accounts is not None and is_redis_url(config.accounts.path):
        return config.accounts.path
    return None


def forget_stored_messages(accounts_location: str, name: str) -> bool:
    """Remove what history keeps of ``name`` beside the accounts at
    ``accounts_location`` (its account was removed): in that Redis, or in the
    history file beside a SQLite database; False if no history file is there
    (nothing is created)."""
    store: MessageStore
    if is_redis_url(accounts_location):
        from reactor.history.redis_store import RedisHistory

        store = RedisHistory(accounts_location, HistoryConfig())
    else:
        path = history_path(accounts_location)
        if not os.path.exists(path):
            return False
        store = SQLiteHistory(path, HistoryConfig())
    try:
        store.forget(name)
    finally:
        store.close()
    return True


def build_chat(config: ServerConfig, roster: Roster[Connection] | None = None,
               accounts: LoginStep | None = None,
               clock: Callable[[], float] = time.monotonic,
               history: MessageStore | None = None) -> ChatService:
    """The chat service, with the roster, login step and history store the
    configuration asks for (or those given, as tests give theirs)."""
    if roster is None:
        roster = make_roster(config)
    if accounts is None:
        accounts = open_accounts(config.accounts)
    try:
        if history is None:
            history = open_history(config)
    except BaseException:
        if accounts is not None:
            accounts.close()
        raise
    return ChatService(config, roster, accounts, clock, history=history)


def make_site(config: ServerConfig) -> Site | None:
    """What the web port serves (the page, the origin rule), if the
    configuration has one (``--web-port``); raises WebSetupError without
    the ``websockets`` package, before anything is bound."""
    if config.web_port is None:
        return None
    require_websockets()
    return Site(OriginRule(config.web_origins))


def make_server(config: ServerConfig, backend: str = DEFAULT_BACKEND, *,
                roster: Roster[Connection] | None = None,
                accounts: LoginStep | None = None, history: MessageStore | None = None,
                **options: object) -> Server:
    """Build the chat and bind a server of the named backend around it, and
    the admin endpoint's listener if ``config.admin_port`` is set (raises
    OSError if a port is busy; nothing stays open then).  ``options`` are
    the backend's own (``loop=`` for asyncio)."""
    cls = server_class(backend)  # an unknown backend is refused before anything opens
    site = make_site(config)
    chat = build_chat(config, roster, accounts, history=history)
    admin: socket.socket | None = None
    try:
        if config.admin_port is not None:
            admin = open_admin_listener(config)
        server = cls(config, chat, web=site, **options)  # type: ignore[arg-type]
    except BaseException:
        chat.close()
        if admin is not None:
            admin.close()
        raise
    if admin is not None:
        server.listen_for(admin_endpoint(chat, server.certificate), admin)
    return server


def open_admin_listener(config: ServerConfig) -> socket.socket:
    """The admin endpoint's listening socket (raises OSError, naming the
    address, if it cannot be bound)."""
    assert config.admin_port is not None
    try:
        return open_listener(replace(config, host=config.admin_host, port=config.admin_port,
                                     reuse_port=False))
    except OSError as error:
        error.host, error.port = config.admin_host, config.admin_port  # type: ignore[attr-defined]
        raise


def admin_endpoint(chat: ChatService, certificate: TLSCertificate | None = None) -> AdminEndpoint:
    """The admin endpoint over the chat, and over the parts it was given
    that report metrics and readiness of their own (the cluster's roster,
    the accounts, the TLS certificate's handshakes)."""
    parts: list[Monitored] = []
    for part in (chat.whiteboard, chat.accounts, certificate):
        if isinstance(part, Monitored):
            parts.append(part)
    return AdminEndpoint(chat, parts, version())
