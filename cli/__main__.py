"""``python -m cli <server_ip> <port> <username>``: the reactor-chat terminal client.

Everything a user can get wrong ends in one line on stderr and a non-zero
exit status, never a traceback: a wrong argument or a bad username (status 2,
checked before any connection is made, by the server's own rules in
:mod:`protocol`), a server that cannot be reached, refuses the login or goes
away (status 1).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
from pathlib import Path
from typing import TextIO

from cli.connection import PROG, ClientError, connect
from cli.display import ServerLine
from cli.piped import run_piped
from protocol import ProtocolError, validate_username

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

_EPILOG = """\
modes:
  With a terminal on stdin and stdout: a prompt with line editing, history
  (up arrow) and Tab completion of commands and online users; incoming
  messages appear above the line being typed.  bye, Ctrl-D or Ctrl-C log out.
  Otherwise (a pipe or a file): commands are read line by line, every server
  line is printed to stdout as it arrives, and at bye or end of input the
  client logs out and waits for the server to confirm.

commands:
  chat <user> "<message>" | broadcast "<message>" | users | help | bye

exit status:
  0  logged out normally
  1  cannot connect, login refused, or the server went away
  2  wrong arguments or an invalid username
"""


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but an argument error is one line and no SystemExit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("the port must be a number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"the port must be 1-65535, not {value}")
    return value


def _prog() -> str:
    # Run as "python -m cli" argv[0] is .../cli/__main__.py; say so in messages.
    return "python -m cli" if Path(sys.argv[0]).name == "__main__.py" else PROG


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=_prog(),
        description="reactor-chat terminal client: log in to a reactor-chat server and chat.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("server", help="server address or host name, e.g. 127.0.0.1")
    parser.add_argument("port", type=_port, help="server TCP port, e.g. 1234")
    parser.add_argument("username",
                        help="1-32 letters, digits, '_', '-' or '.' (case-insensitive)")
    return parser


def _harden_streams() -> None:
    # Started with stdout or stderr closed (``>&-``): write into the void
    # rather than fail on the first message.
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
    # Server text is already escaped; this only keeps a non-UTF-8 locale from
    # turning a message with an accent into a UnicodeEncodeError.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _harden_streams()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        validate_username(args.username)
    except _UsageError as error:
        print(f"{PROG}: {error} (usage: {parser.prog} SERVER PORT USERNAME; "
              "--help for more)", file=sys.stderr)
        return EXIT_USAGE
    except ProtocolError as error:
        print(f"{PROG}: invalid username: {error.reason}", file=sys.stderr)
        return EXIT_USAGE

    # Terminated or hung up is treated like Ctrl-C: once logged in, log out
    # first.  (The interactive mode installs its own handlers on its loop.)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    interactive = _is_terminal(sys.stdin) and _is_terminal(sys.stdout)
    conn = None
    try:
        conn = connect(args.server, args.port)
        conn.log_in(args.username, show=_print_line)
        if interactive:
            from cli.interactive import run_interactive

            return run_interactive(conn, args.username)
        return run_piped(conn, _stdin_fd(), sys.stdout, sys.stderr)
    except ClientError as error:
        print(error.line, file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        # Interrupted while connecting or logging in: nothing to log out of.
        return EXIT_FAILURE
    finally:
        if conn is not None:
            conn.close()
        _flush_quietly()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _is_terminal(stream: TextIO | None) -> bool:
    return stream is not None and stream.isatty()


def _stdin_fd() -> int:
    # Started with stdin closed (``<&-``): behave as if it were empty.
    return sys.stdin.fileno() if sys.stdin is not None else os.open(os.devnull, os.O_RDONLY)


def _print_line(line: ServerLine) -> None:
    with contextlib.suppress(OSError):  # stdout closed early: see _flush_quietly
        print(line.text, flush=True)


def _flush_quietly() -> None:
    # stdout may be a pipe whose reader has gone (``| head``); do not let the
    # interpreter report that as an error at exit.
    try:
        sys.stdout.flush()
    except OSError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
