"""``python -m reactor``: run the chat server.

User mistakes (bad arguments, a busy port) get one line on stderr and a
non-zero exit, never a traceback.  SIGINT and SIGTERM shut down cleanly:
every client is told, connections close, exit status 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import NoReturn

from reactor.backends import BACKENDS, DEFAULT_BACKEND, make_server
from reactor.config import ServerConfig
from reactor.sockets import raise_open_file_limit

log = logging.getLogger("reactor")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _port(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return value


class _OneLineErrors(argparse.ArgumentParser):
    """A mistake on the command line is one line naming it, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    d = ServerConfig()
    p = _OneLineErrors(
        prog="python -m reactor", description="reactor-chat: a multi-client TCP chat server."
    )
    p.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                   help="I/O design: one selectors loop, or a thread per client (default: select)")
    p.add_argument("--host", default=d.host, help=f"address to listen on (default: {d.host})")
    p.add_argument("--port", type=_port, default=d.port,
                   help=f"TCP port; 0 picks a free one (default: {d.port})")
    p.add_argument("--max-clients", type=_positive_int, default=d.max_clients,
                   help=f"connections served at once (default: {d.max_clients})")
    p.add_argument("--max-clients-per-ip", type=_non_negative_int, default=d.max_clients_per_ip,
                   help="connections from one address; 0 = no limit (default: 0)")
    p.add_argument("--max-line", type=_positive_int, default=d.max_line,
                   help=f"longest accepted line in bytes (default: {d.max_line})")
    p.add_argument("--output-limit", type=_positive_int, default=d.output_limit,
                   help="bytes queued for a client before it is cut off as a slow consumer "
                        f"(default: {d.output_limit})")
    p.add_argument("--login-timeout", type=_positive_float, default=d.login_timeout,
                   help=f"seconds to send a valid username (default: {d.login_timeout:g})")
    p.add_argument("--keepalive-idle", type=_non_negative_int, default=d.keepalive_idle,
                   help="idle seconds before TCP keepalive probes; 0 = off "
                        f"(default: {d.keepalive_idle})")
    p.add_argument("--log-level", default="INFO", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="INFO logs every message, as the original did (default: INFO)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stdout, level=args.log_level, format="[Server] %(message)s", force=True
    )
    config = ServerConfig(
        host=args.host, port=args.port, max_clients=args.max_clients,
        max_clients_per_ip=args.max_clients_per_ip, max_line=args.max_line,
        output_limit=args.output_limit, login_timeout=args.login_timeout,
        keepalive_idle=args.keepalive_idle,
    )
    raise_open_file_limit(config.max_clients)
    try:
        server = make_server(config, args.backend)
    except OSError as error:
        # create_server() decorates strerror with the address; say it once.
        reason = os.strerror(error.errno) if error.errno else str(error)
        print(f"reactor: cannot listen on {args.host}:{args.port}: {reason}", file=sys.stderr)
        return 1
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: server.stop())
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
