"""``python -m reactor`` (or ``reactor-chat-server``): run the chat server.

User mistakes (bad arguments, a busy port, an unknown host, a missing or
bad certificate or key) get one line on stderr, beginning
``reactor-chat-server:`` however the server was started, and a non-zero
exit (2 for arguments and TLS files, 1 for a port that cannot be listened
on), never a traceback.  The options and their checks are in
``reactor.options``; what each signal does is in ``reactor.signals``.
Here: ``check-config``, starting the server (or a supervisor of
``--workers``), and the errors it may meet on the way.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import replace

from reactor.accounts.hashing import below_recommended, hasher_from_spec
from reactor.accounts.store import StoreUnavailable
from reactor.app import make_server
from reactor.cluster.workers import die_with_parent, supervise
from reactor.logs import LogPipeline, complain
from reactor.options import PROGRAM, build_parser, config_from_args, parse_args
from reactor.redis.url import LinkError, check_url, without_password
from reactor.settings import describe, given_on_command_line, layered, options_of
from reactor.signals import SignalHandlers
from reactor.sockets import raise_open_file_limit
from reactor.tls import TLSSetupError, load_context
from reactor.web import WebSetupError, require_websockets

log = logging.getLogger("reactor")


def _why_not_listening(error: OSError) -> str:
    if isinstance(error, socket.gaierror):
        unknown = {getattr(socket, name, None)
                   for name in ("EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY")}
        if error.errno in unknown:
            return "unknown host"
        return error.strerror or str(error)
    # create_server() decorates strerror with the address; say it once.
    return os.strerror(error.errno) if error.errno else str(error)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _reserve_standard_descriptors() -> None:
    """Point a closed stdin/stdout/stderr at /dev/null, so that no socket
    takes descriptor 0, 1 or 2 and receives what was meant for them."""
    for fd, mode in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, mode)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def check_config(argv: list[str], environ: Mapping[str, str] | None = None) -> int:
    """``check-config [options]``: check the configuration as the server
    would at start (and the TLS files it names), then print it as TOML, each
    value with where it came from, secrets masked.  For ``ExecStartPre``:
    exit status 0 if the server would start with it, 2 and one line if not."""
    environ = os.environ if environ is None else environ
    args = parse_args(argv, environ)  # exits 2 with one line on a mistake
    try:
        if args.tls_cert is not None:
            load_context(args.tls_cert, args.tls_key, args.tls_key_password_file)
        if args.cluster is not None:
            check_url(args.cluster)  # a Redis URL, and the [cluster] extra installed
        if args.web_port is not None:
            require_websockets()  # the [web] extra installed
    except WebSetupError as error:
        complain(f"{PROGRAM}: {error}")
        return 2
    except TLSSetupError as error:
        complain(f"{PROGRAM}: TLS: {error}")
        return 2
    except LinkError as error:
        complain(f"{PROGRAM}: {error}")
        return 2
    parser = build_parser()
    _, settings = layered(parser, argv, environ)
    origins = {setting.option.action.dest: setting.origin for setting in settings}
    origins.update(dict.fromkeys(given_on_command_line(build_parser(), argv), "command line"))
    print(describe(options_of(parser), args, origins, mask=without_password), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["check-config"]:
        return check_config(argv[1:])
    args = parse_args(argv)
    _reserve_standard_descriptors()
    if args.workers is not None and args.worker_of is None:
        return _supervise(args, argv)
    label = "Server"
    if args.worker_of is not None:
        parent, port, index = args.worker_of.split(":")
        die_with_parent(int(parent))
        args.port = int(port)
        if args.admin_port:  # each worker's own (0: each picks a free one)
            args.admin_port += int(index) - 1
        label = f"Worker {index}"
    signals = SignalHandlers(args.backend)
    signals.install()
    logs = LogPipeline(args.log_level, PROGRAM, label=label, log_format=args.log_format,
                       log_time=args.log_time)
    logs.start()
    try:
        return _serve(args, signals)
    finally:
        logs.stop()
        signals.restore()


def _supervise(args: argparse.Namespace, argv: list[str]) -> int:
    logs = LogPipeline(args.log_level, PROGRAM, log_format=args.log_format, log_time=args.log_time)
    logs.start()
    try:
        return supervise(argv, args.workers, args.host, args.port)
    except OSError as error:
        complain(f"{PROGRAM}: cannot listen on {_address(args.host, args.port)}: "
                 f"{_why_not_listening(error)}")
        return 1
    finally:
        logs.stop()


def _serve(args: argparse.Namespace, signals: SignalHandlers) -> int:
    config = config_from_args(args)
    if args.worker_of is not None:
        config = replace(config, reuse_port=True)
    raise_open_file_limit(config.max_clients)
    options = {} if args.loop is None else {"loop": args.loop}
    try:
        server = make_server(config, args.backend, **options)
    except TypeError:
        complain(f"{PROGRAM}: --loop is not an option of the {args.backend} backend")
        return 2
    except TLSSetupError as error:  # a missing or bad certificate or key file
        complain(f"{PROGRAM}: TLS: {error}")
        return 2
    except WebSetupError as error:  # --web-port without the websockets package
        complain(f"{PROGRAM}: {error}")
        return 2
    except ValueError as error:  # e.g. uvloop asked for and not installed
        complain(f"{PROGRAM}: {error}")
        return 2
    except StoreUnavailable as error:
        complain(f"{PROGRAM}: {error}")
        return 1
    except LinkError as error:  # a bad --cluster URL, or no redis package
        complain(f"{PROGRAM}: {error}")
        return 2
    except OSError as error:
        port = getattr(error, "port", args.port)  # the TLS, web or admin port's, if that failed
        host = getattr(error, "host", args.host)
        complain(f"{PROGRAM}: cannot listen on {_address(host, port)}: "
                 f"{_why_not_listening(error)}")
        return 1
    if config.accounts is not None:
        hasher = hasher_from_spec(config.accounts.password_hash)
        log.info("Registered names in %s; new passwords hashed with %s",
                 without_password(config.accounts.path), hasher.spec)
        if below_recommended(hasher):
            log.warning("--password-hash %s is weaker than OWASP's minimum",
                        config.accounts.password_hash)
        if config.accounts.allow_plaintext_passwords:
            log.warning("Passwords are accepted over plain TCP from any address "
                        "(--allow-plaintext-passwords)")
    signals.attach(server)
    try:
        return server.serve_forever()  # 1 if the loop itself failed
    except KeyboardInterrupt:  # only if a caller put back SIGINT's default
        return 0


if __name__ == "__main__":
    sys.exit(main())
