"""The command-line options of ``python -m reactor`` (``reactor-chat-server``).

The parser (every option in its ``[section]``, its range and its help), the
checks that span several options, and the ``ServerConfig`` they make.  The
same options come from a ``--config`` file and ``REACTOR_*`` variables
through ``reactor.settings``.  A mistake is one line on stderr beginning
``reactor-chat-server:`` and exit status 2, never a usage dump or a
traceback; ``--help`` shows how the server was invoked.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Mapping
from typing import NoReturn

from reactor.accounts.hashing import hasher_from_spec
from reactor.backends import BACKENDS, DEFAULT_BACKEND, EVENT_LOOPS
from reactor.config import AccountsConfig, ClusterConfig, HistoryConfig, ServerConfig
from reactor.flow import FloodLimits
from reactor.log_format import FORMAT_CHOICES, TIME_CHOICES
from reactor.redis.url import is_redis_url
from reactor.settings import (
    CONFIG_VARIABLE,
    SettingsError,
    accepts,
    layered,
    name_in_file,
    section,
)
from reactor.version import version
from reactor.web.http import parse_origins

# The console script's name (pyproject.toml): every line the server prints
# about itself on stderr begins with it, whichever way it was started.
PROGRAM = "reactor-chat-server"

# Ranges of the numeric options, shown in --help and checked at start.
MAX_CLIENTS = 1_000_000  # below Linux's default nr_open (1,048,576) with room for our own
MIN_LINE, MAX_LINE = 16, 1024 * 1024
MIN_OUTPUT_LIMIT, MAX_OUTPUT_LIMIT = 64 * 1024, 1024 * 1024 * 1024
MIN_LOGIN_TIMEOUT, MAX_LOGIN_TIMEOUT = 0.1, 86_400.0  # 100 ms .. one day
MAX_KEEPALIVE_IDLE = 32_767  # Linux's limit for TCP_KEEPIDLE


def _invoked_as() -> str:
    """How the user started us, for --help's usage line."""
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    if spec is not None and spec.name == "reactor.__main__":
        return "python -m reactor"
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name and name not in ("__main__.py", "-c") else PROGRAM


def _whole_number(low: int, high: int, unit: str = "") -> Callable[[str], int]:
    @accepts(int)
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}-{high}{unit}, got {text}")
        return value

    return parse


def _origins(text: str) -> tuple[str, ...]:
    try:
        return parse_origins(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _seconds(low: float, high: float, unit: str = "seconds") -> Callable[[str], float]:
    @accepts(int, float)
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be {low:g}-{high:g} {unit}, got {text}")
        return value

    return parse


@accepts(bool)
def _on_off(text: str) -> bool:
    if text.lower() in ("on", "off"):
        return text.lower() == "on"
    raise argparse.ArgumentTypeError(f"must be on or off, got {text!r}")


class _OneLineErrors(argparse.ArgumentParser):
    """A mistake on the command line is one line naming it, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROGRAM}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    d = ServerConfig()
    p = _OneLineErrors(
        prog=_invoked_as(),
        description="reactor-chat: a multi-client TCP chat server. "
                    "Signals: SIGINT/SIGTERM shut down cleanly, SIGHUP reloads, "
                    "SIGUSR1 logs a status line. The options listed under a [section] "
                    "can also be set in that table of the --config file, as their name "
                    "without the section's prefix (--tls-cert is cert in [tls]), or in "
                    "the environment (REACTOR_TLS_CERT); the command line wins over the "
                    "environment, which wins over the file.",
        epilog="python -m reactor check-config [options] checks the configuration and "
               "prints it, for a service's pre-start step.",
    )
    p.add_argument("--version", action="version", version=f"{PROGRAM} {version()}")
    p.add_argument("--config", metavar="FILE",
                   help="read options from this TOML file (every key is in the source's "
                        "example, deploy/reactor-chat.toml; "
                        f"default: ${CONFIG_VARIABLE} if set, else none)")
    server = section(p, "server", "where and how to listen")
    limits = section(p, "limits", "sizes and times a client may use")
    flood = section(p, "flood", "flood control")
    tls = section(p, "tls", "TLS on the main port or a second one")
    accounts = section(p, "accounts", "registered names")
    history = section(p, "history", "history and offline messages")
    cluster = section(p, "cluster", "one chat on many servers")
    web = section(p, "web", "the chat page and its WebSocket, for browsers")
    admin = section(p, "admin", "metrics and health over HTTP")
    logs = section(p, "log", "the log")
    server.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                        help="I/O design: a selectors loop, a thread per client, or asyncio "
                             f"(default: {DEFAULT_BACKEND})")
    server.add_argument("--host", default=d.host,
                        help="address or host name to listen on; '::' listens on every IPv6 "
                             f"and IPv4 address (default: {d.host}, every IPv4 address)")
    server.add_argument("--port", type=_whole_number(0, 65535), default=d.port,
                        help=f"TCP port, 0-65535; 0 picks a free one (default: {d.port})")
    server.add_argument("--max-clients", type=_whole_number(1, MAX_CLIENTS),
                        default=d.max_clients,
                        help=f"connections served at once, 1-{MAX_CLIENTS} "
                             f"(default: {d.max_clients})")
    server.add_argument("--max-clients-per-ip", type=_whole_number(0, MAX_CLIENTS),
                        default=d.max_clients_per_ip,
                        help=f"connections from one address, 0-{MAX_CLIENTS}; 0 = no limit "
                             f"(default: {d.max_clients_per_ip})")
    limits.add_argument("--max-line", type=_whole_number(MIN_LINE, MAX_LINE, " bytes"),
                        default=d.max_line,
                        help=f"longest accepted line in bytes, {MIN_LINE}-{MAX_LINE} "
                             f"(default: {d.max_line})")
    limits.add_argument("--output-limit",
                        type=_whole_number(MIN_OUTPUT_LIMIT, MAX_OUTPUT_LIMIT, " bytes"),
                        default=d.output_limit,
                        help="bytes queued for a client before it is cut off as a slow "
                             f"consumer, {MIN_OUTPUT_LIMIT}-{MAX_OUTPUT_LIMIT} and at least "
                             "twice --max-line "
                             f"(default: {d.output_limit})")
    server.add_argument("--login-timeout", type=_seconds(MIN_LOGIN_TIMEOUT, MAX_LOGIN_TIMEOUT),
                        default=d.login_timeout,
                        help=f"seconds to send a valid username, {MIN_LOGIN_TIMEOUT:g}-"
                             f"{MAX_LOGIN_TIMEOUT:g} (default: {d.login_timeout:g})")
    server.add_argument("--keepalive-idle", type=_whole_number(0, MAX_KEEPALIVE_IDLE),
                        default=d.keepalive_idle,
                        help="idle seconds before TCP keepalive probes, "
                             f"0-{MAX_KEEPALIVE_IDLE}; 0 = off (default: {d.keepalive_idle})")
    limits.add_argument("--output-hard-limit",
                        type=_whole_number(MIN_OUTPUT_LIMIT, MAX_OUTPUT_LIMIT, " bytes"),
                        default=None,
                        help="bytes queued for a client that cut it off at once; "
                             "--output-limit cuts it only after --slow-consumer-grace "
                             "seconds above it "
                             f"(default: {d.output_hard_limit} or 4 x --output-limit, "
                             "whichever is larger)")
    limits.add_argument("--slow-consumer-grace", type=_seconds(0.0, 3600.0),
                        default=d.slow_consumer_grace,
                        help="seconds a client may stay above --output-limit, 0-3600 "
                             f"(default: {d.slow_consumer_grace:g})")
    limits.add_argument("--output-budget",
                        type=_whole_number(MIN_OUTPUT_LIMIT, 64 * MAX_OUTPUT_LIMIT, " bytes"),
                        default=d.output_budget,
                        help="bytes queued for all clients together; past it the largest "
                             f"queues are cut first (default: {d.output_budget})")
    limits.add_argument("--delivery-timeout", type=_seconds(0.1, 3600.0),
                        default=d.delivery_timeout,
                        help="seconds a direct message may wait for a recipient who is not "
                             "reading before its sender is told it was not delivered, 0.1-3600 "
                             f"(default: {d.delivery_timeout:g})")
    f = d.flood
    control = flood.add_argument(
        "--flood-control", type=_on_off, default=f.enabled, metavar="on|off",
        help="meter each client's lines, broadcast deliveries and logins per address; "
             "excess input is read later, never dropped (default: on)")
    name_in_file(control, "enabled")
    flood.add_argument("--line-rate", type=_seconds(0.1, 1e6, "per second"),
                       default=f.lines_per_second,
                       help=f"lines per second per client (default: {f.lines_per_second:g})")
    flood.add_argument("--line-burst", type=_whole_number(1, 10**9), default=f.lines_burst,
                       help=f"lines a client may send at once (default: {f.lines_burst})")
    flood.add_argument("--delivery-rate", type=_seconds(1.0, 1e9, "per second"),
                       default=f.deliveries_per_second,
                       help="broadcast deliveries (recipients) per second per client "
                            f"(default: {f.deliveries_per_second:g})")
    flood.add_argument("--delivery-burst", type=_whole_number(1, 10**12),
                       default=f.deliveries_burst,
                       help=f"broadcast deliveries at once (default: {f.deliveries_burst})")
    flood.add_argument("--login-rate", type=_seconds(0.01, 1e6, "per second"),
                       default=f.logins_per_second,
                       help=f"login attempts per second per address (default: "
                            f"{f.logins_per_second:g})")
    flood.add_argument("--login-burst", type=_whole_number(1, 10**9), default=f.logins_burst,
                       help=f"login attempts at once per address (default: {f.logins_burst})")
    tls.add_argument("--tls-cert", metavar="FILE",
                     help="PEM certificate (chain) for TLS; with --tls-key and no --tls-port, "
                          "the main port speaks TLS only")
    tls.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    tls.add_argument("--tls-key-password-file", metavar="FILE",
                     help="file whose first line is the password of an encrypted --tls-key")
    tls.add_argument("--tls-port", type=_whole_number(0, 65535), default=None,
                     help="a second port, speaking TLS, beside the plain --port "
                          "(like IRC's 6667/6697); needs --tls-cert and --tls-key")
    web.add_argument("--web-port", type=_whole_number(0, 65535), default=None,
                     help="serve the chat page at http://HOST:PORT/ and its WebSocket on this "
                          "port, 0-65535 (https and wss with --tls-cert; needs the [web] extra; "
                          "default: none)")
    web.add_argument("--web-host", default=None,
                     help="address to serve the page on (default: --host)")
    origins = web.add_argument(
        "--web-origin", type=_origins, default=(), metavar="ORIGIN[,ORIGIN...]",
        help="pages that may open the chat's WebSocket, as http[s]://host[:port], separated "
             "by commas, e.g. for a proxy in front (default: only the page's own host and port)")
    name_in_file(origins, "origins")
    a = AccountsConfig(path="")
    store = accounts.add_argument("--accounts", metavar="PATH|URL", nargs="?", const="",
                                  default=None,
                          help="keep registered names in this SQLite file (created if missing) "
                               "or Redis URL: a user can then register their name with a "
                               "password; with --cluster, give no value: the cluster's Redis "
                               "(default: none, the open chat)")
    name_in_file(store, "store", secret=True)
    accounts.add_argument("--allow-plaintext-passwords", action="store_true",
                          help="accept passwords over plain TCP from other machines too (by "
                               "default only over TLS or from this machine)")
    accounts.add_argument("--password-hash", default=a.password_hash, metavar="SCHEME",
                          help="hash for new passwords: scrypt (standard library), or argon2id "
                               "(needs argon2-cffi), with optional parameters such as "
                               f"scrypt:ln=15,r=8,p=3 (default: {a.password_hash}, "
                               "OWASP's minimum)")
    accounts.add_argument("--password-tries", type=_whole_number(1, 100), default=a.max_tries,
                          help="wrong passwords per connection before it is closed, 1-100 "
                               f"(default: {a.max_tries})")
    accounts.add_argument("--password-backoff", type=_seconds(0.0, 3600.0),
                          default=a.backoff_first,
                          help="seconds a name and an address wait after a wrong password, "
                               f"doubling with each one, 0-3600 (default: {a.backoff_first:g})")
    accounts.add_argument("--password-backoff-max", type=_seconds(0.0, 86_400.0),
                          default=a.backoff_max,
                          help=f"the longest such wait, 0-86400 (default: {a.backoff_max:g})")
    h = HistoryConfig()
    keep = history.add_argument(
        "--history", type=_on_off, default=False, metavar="on|off",
        help="keep the broadcasts, and the direct messages of registered names, for the "
             "history command; hold messages for registered names who are offline; in the "
             "--cluster Redis (shared by every node) or a Redis --accounts, in a SQLite file "
             "beside a SQLite --accounts file (kept across restarts), else in memory "
             "(default: off, nothing kept)")
    name_in_file(keep, "enabled")
    history.add_argument("--history-direct", type=_whole_number(1, 1_000_000),
                         default=h.direct_count,
                         help="messages kept per conversation between two users, 1-1000000 "
                              f"(default: {h.direct_count})")
    history.add_argument("--history-broadcasts", type=_whole_number(1, 1_000_000),
                         default=h.broadcast_count,
                         help="broadcasts kept, 1-1000000 "
                              f"(default: {h.broadcast_count})")
    history.add_argument("--history-age", type=_seconds(60.0, 10 * 365 * 86_400.0),
                         default=h.max_age,
                         help="seconds a message is kept, 60-315360000 "
                              f"(default: {h.max_age:g}, 7 days)")
    history.add_argument("--history-waiting", type=_whole_number(1, 100_000),
                         default=h.waiting_max,
                         help="messages that may wait for one offline registered name, "
                              f"1-100000 (default: {h.waiting_max})")
    url = cluster.add_argument("--cluster", metavar="URL", default=None,
                         help="join one chat shared by every server pointed at this Redis "
                              "(redis://HOST:PORT[/DB], rediss:// for TLS; needs the [cluster] "
                              "extra); default: this process is the whole chat")
    name_in_file(url, "url", secret=True)
    c = ClusterConfig(url="")
    cluster.add_argument("--cluster-lease", type=_seconds(0.3, 60.0), default=c.lease,
                         help="seconds after which a server that stopped answering is declared "
                              "dead and its users offline, 0.3-60 (they are announced within "
                              f"about 1.3 x this; default: {c.lease:g})")
    admin.add_argument("--admin-port", type=_whole_number(0, 65535), default=d.admin_port,
                       help="serve /metrics (Prometheus), /healthz and /readyz over HTTP on this "
                            "port; 0 picks a free one; with --workers, worker N uses this + N - 1 "
                            "(default: none, off)")
    admin.add_argument("--admin-host", default=d.admin_host,
                       help="address the admin port listens on; anyone who reaches it reads the "
                            f"server's metrics (default: {d.admin_host}, this machine only)")
    server.add_argument("--workers", type=_whole_number(1, 256), default=None,
                        help="run this many server processes sharing the port (SO_REUSEPORT), "
                             "supervised and restarted if they die; needs --cluster "
                             "(default: one process, no supervisor)")
    p.add_argument("--worker-of", default=None, help=argparse.SUPPRESS)
    server.add_argument("--loop", choices=EVENT_LOOPS, default=None,
                        help="the event loop of the backends built on one (default: asyncio's own;"
                             " uvloop needs the uvloop package)")
    logs.add_argument("--log-level", default="INFO", type=str.upper,
                      choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                      help="INFO logs every message, as the original did (default: INFO)")
    logs.add_argument("--log-text", type=_on_off, default=d.log_text, metavar="on|off",
                      help="on logs what users write, as the original did; off logs only its "
                           "length, so that the log holds no private messages (default: off)")
    logs.add_argument("--log-time", choices=TIME_CHOICES, default="utc", type=str.lower,
                      help="each line begins with its time (RFC 3339) in UTC or local time, "
                           "or not at all: off under journald, which stamps lines itself "
                           "(default: utc)")
    logs.add_argument("--log-format", choices=FORMAT_CHOICES, default="text", type=str.lower,
                      help="text: the original's lines; json: one JSON object per line, with "
                           "time, level, event and its fields (default: text)")
    return p


def parse_args(argv: list[str] | None = None,
               environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """The options from the command line, over ``REACTOR_*`` variables of
    ``environ`` (default: the process's), over the ``--config`` file."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        beneath, _ = layered(parser, argv, environ)
    except SettingsError as error:
        parser.exit(2, f"{PROGRAM}: {error}\n")
    args = parser.parse_args([*beneath, *argv])
    if args.output_hard_limit is None:
        args.output_hard_limit = max(ServerConfig().output_hard_limit, 4 * args.output_limit)
    if args.output_hard_limit < args.output_limit:
        parser.error(
            f"argument --output-hard-limit: must be at least --output-limit "
            f"({args.output_limit} bytes), got {args.output_hard_limit}"
        )
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("TLS needs both --tls-cert and --tls-key")
    if args.tls_cert is None and (args.tls_port is not None
                                  or args.tls_key_password_file is not None):
        option = "--tls-port" if args.tls_port is not None else "--tls-key-password-file"
        parser.error(f"argument {option}: needs --tls-cert and --tls-key")
    if args.output_limit < 2 * args.max_line:
        parser.error(
            f"argument --output-limit: must be at least twice --max-line "
            f"({2 * args.max_line} bytes), got {args.output_limit}"
        )
    if args.web_port is None and (args.web_host is not None or args.web_origin):
        option = "--web-host" if args.web_host is not None else "--web-origin"
        parser.error(f"argument {option}: needs --web-port")
    if args.workers is not None and args.web_port == 0:
        parser.error("argument --web-port: with --workers, give a fixed port (the workers "
                     "share it, as they share --port; 0 would give each its own)")
    if args.workers is not None and args.cluster is None:
        parser.error("argument --workers: needs --cluster (separate processes share "
                     "one chat only through Redis)")
    if args.accounts == "":  # --accounts with no value: the cluster's Redis
        if args.cluster is None:
            parser.error("argument --accounts: give a SQLite file or a Redis URL "
                         "(with no value it means the --cluster Redis)")
        args.accounts = args.cluster
    if args.accounts is not None and args.cluster is not None \
            and not is_redis_url(args.accounts):
        parser.error("argument --accounts: with --cluster, every node must see the same "
                     "registered names: give no value (the cluster's Redis) or a Redis URL, "
                     "not a file")
    if args.accounts is not None:
        try:
            hasher_from_spec(args.password_hash)
        except ValueError as error:
            parser.error(f"argument --password-hash: {error}")
    return args


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host, port=args.port, max_clients=args.max_clients,
        max_clients_per_ip=args.max_clients_per_ip, max_line=args.max_line,
        output_limit=args.output_limit, login_timeout=args.login_timeout,
        keepalive_idle=args.keepalive_idle, log_text=args.log_text,
        output_hard_limit=args.output_hard_limit, slow_consumer_grace=args.slow_consumer_grace,
        output_budget=args.output_budget, delivery_timeout=args.delivery_timeout,
        tls_cert=args.tls_cert, tls_key=args.tls_key,
        tls_key_password_file=args.tls_key_password_file, tls_port=args.tls_port,
        web_port=args.web_port, web_host=args.web_host, web_origins=args.web_origin,
        flood=FloodLimits(
            enabled=args.flood_control,
            lines_per_second=args.line_rate, lines_burst=args.line_burst,
            deliveries_per_second=args.delivery_rate, deliveries_burst=args.delivery_burst,
            logins_per_second=args.login_rate, logins_burst=args.login_burst,
        ),
        accounts=None if args.accounts is None else AccountsConfig(
            path=args.accounts, password_hash=args.password_hash,
            allow_plaintext_passwords=args.allow_plaintext_passwords,
            max_tries=args.password_tries, backoff_first=args.password_backoff,
            backoff_max=max(args.password_backoff, args.password_backoff_max),
        ),
        cluster=None if args.cluster is None else ClusterConfig(
            url=args.cluster, lease=args.cluster_lease,
        ),
        admin_port=args.admin_port, admin_host=args.admin_host,
        history=HistoryConfig(
            direct_count=args.history_direct, broadcast_count=args.history_broadcasts,
            max_age=args.history_age, waiting_max=args.history_waiting,
        ) if args.history else None,
    )
