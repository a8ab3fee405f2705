"""Server settings, shared by both backends and the command line."""

from __future__ import annotations

from dataclasses import dataclass

from protocol import DEFAULT_MAX_LINE


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 1234
    max_clients: int = 1024
    # Off (0) by default so that load tests from one loopback address work.
    max_clients_per_ip: int = 0
    max_line: int = DEFAULT_MAX_LINE
    # Bytes queued for one client before it counts as a slow consumer and is
    # cut off (Redis's client-output-buffer-limit, hard limit).
    output_limit: int = 4 * 1024 * 1024
    login_timeout: float = 30.0
    # TCP keepalive: idle seconds before the first probe; 0 turns it off.
    keepalive_idle: int = 60
    keepalive_interval: int = 10
    keepalive_count: int = 5
    # How long a closing connection may take to drain before it is dropped.
    close_linger: float = 2.0
    backlog: int = 1024
    # Off keeps what users write (message and broadcast text) out of the log,
    # for operators who must not read private messages (--log-text off).
    log_text: bool = True
