"""Server settings, shared by every backend and the command line."""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol import DEFAULT_MAX_LINE
from reactor.flow import FloodLimits

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class AccountsConfig:
    """Registered names (``--accounts PATH|URL``); see :mod:`reactor.accounts`."""

    # A SQLite file, or a Redis URL (a cluster's nodes share their accounts).
    path: str
    # scrypt (standard library) or argon2id (argon2-cffi), with optional
    # parameters: "scrypt:ln=15,r=8,p=3"; see reactor.accounts.hashing.
    password_hash: str = "scrypt"
    # Passwords only over TLS or from a loopback peer, unless this is set.
    allow_plaintext_passwords: bool = False
    # Loopback peers count as secure (they are this machine).  Off only in
    # tests, to stand for a remote peer.
    trust_loopback: bool = True
    # Wrong passwords per connection before it is closed.
    max_tries: int = 3
    # Back-off after failures, per name and per address: first, doubling to most.
    backoff_first: float = 1.0
    backoff_max: float = 300.0
    backoff_keys: int = 10_000
    # Threads that hash passwords (and, as many again, threads that look
    # names up in the store: a login never waits behind a hash).
    workers: int = 2
    # Hashes waiting or under way at once, and of those from one address;
    # the next gets <Server busy: try again in a moment.>.
    hash_queue: int = 32
    hash_queue_per_address: int = 4


@dataclass(frozen=True, slots=True)
class HistoryConfig:
    """History and offline messages (``--history on``); see :mod:`reactor.history`.

    Defaults from the field (ergo, The Lounge): a few hundred messages per
    direct conversation, a few thousand broadcasts, a week.
    """

    # Messages kept per direct conversation, and of the broadcasts.
    direct_count: int = 256
    broadcast_count: int = 2048
    # Nothing older is shown, and it is deleted when next found.
    max_age: float = 7 * 86_400.0
    # Messages that may wait for one offline registered name.
    waiting_max: int = 100
    # History lines a ``history`` request gets when it names no count.
    page_default: int = 20
    # The broadcast backlog a user gets at login: at most this many, of the last backlog_age.
    login_backlog: int = 20
    login_backlog_age: float = 3600.0
    # Direct conversations the memory store keeps at most; the least recently
    # written is dropped first (a bound whatever clients do).
    max_conversations: int = 10_000


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """One chat across server processes through Redis (``--cluster URL``);
    see :mod:`reactor.cluster`."""

    url: str
    # A node that stops renewing its lease for this long is dead: its users
    # are announced offline and their names freed.  Renewed every lease / 6,
    # so a death is noticed within about lease + 2 renewals.
    lease: float = 3.0
    # Entries kept in a node's inbox stream (MAXLEN ~): how far a node may
    # fall behind before it must reload the state (and lose what it missed).
    inbox_max: int = 10_000

    @property
    def renew_interval(self) -> float:
        return self.lease / 6

    @property
    def command_timeout(self) -> float:
        """How long a Redis call may take before Redis counts as out of reach."""
        # Short enough that a stalled Redis is reported well within the lease;
        # not so short that a busy 2-core machine looks like an outage.
        return min(1.0, max(0.3, self.lease / 3))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 1234
    max_clients: int = 1024
    # Off (0) by default so that load tests from one loopback address work.
    max_clients_per_ip: int = 0
    max_line: int = DEFAULT_MAX_LINE
    # Output queued for one client (bytes the kernel would not take yet), as
    # Redis's client-output-buffer-limit: above the soft limit for longer than
    # the grace period, or above the hard limit at any moment, the client is a
    # slow consumer and is cut off.  A reader that keeps up never stays above.
    output_limit: int = 4 * MiB
    output_hard_limit: int = 16 * MiB
    slow_consumer_grace: float = 10.0
    # All clients' queued output together; past it the largest queues are cut.
    output_budget: int = 256 * MiB
    # A client's own replies: past this much queued output its next commands
    # wait until it has read what it was sent (asyncio's write high-water mark).
    output_high_water: int = 64 * 1024
    # How long a direct message may wait in a recipient's queue before it is
    # taken back and its sender told it was not delivered.
    delivery_timeout: float = 5.0
    login_timeout: float = 30.0
    # A first line with no newline followed by this much silence is taken as
    # the username: the original C client sends its name that way.
    login_pause: float = 0.5
    # TCP keepalive: idle seconds before the first probe; 0 turns it off.
    keepalive_idle: int = 60
    keepalive_interval: int = 10
    keepalive_count: int = 5
    # How long a closing connection may take to drain before it is dropped.
    close_linger: float = 2.0
    backlog: int = 1024
    flood: FloodLimits = field(default_factory=FloodLimits)
    # What users write (message and broadcast text) stays out of the log
    # unless an operator asks for it (--log-text on): only its length is
    # logged, so that whoever reads the log does not read private messages.
    log_text: bool = False
    # TLS (reactor.tls): with a certificate and key, ``port`` speaks TLS --
    # unless ``tls_port`` is set, which adds a TLS listener beside the plain
    # one on ``port`` (0 picks a free port).
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_key_password_file: str | None = None
    tls_port: int | None = None
    # None: the open chat, every name free to whoever comes first.
    accounts: AccountsConfig | None = None
    # None: this process is the whole chat.
    cluster: ClusterConfig | None = None
    # None: nothing is kept (--history off); the chat holds no store.
    history: HistoryConfig | None = None
    # The chat page and its WebSocket (reactor.web) on this port, off if
    # None; on ``web_host`` (None: ``host``).  TLS with the certificate above
    # (https, wss).  ``web_origins``: the pages that may open the socket
    # (scheme://host[:port]); empty: only the page's own host and port.
    web_port: int | None = None
    web_host: str | None = None
    web_origins: tuple[str, ...] = ()
    # SO_REUSEPORT on the listeners, so that --workers processes share a port.
    reuse_port: bool = False
    # The admin endpoint (/metrics, /healthz, /readyz over HTTP): off (None)
    # unless a port is given; loopback by default, as nobody outside this
    # machine should read it unless the operator says so.
    admin_port: int | None = None
    admin_host: str = "127.0.0.1"
