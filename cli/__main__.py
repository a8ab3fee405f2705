"""``python -m cli <server_ip> <port> <username>``: the reactor-chat terminal client.

Everything a user can get wrong ends in one line on stderr and a non-zero
exit status, never a traceback: a wrong argument or a bad username (status 2,
checked before any connection is made, by the server's own rules in
:mod:`protocol`), a server that cannot be reached, refuses the login or (in
piped mode) goes away (status 1), a piped line refused or not delivered
(status 3).

On a terminal the first thing :func:`main` does is turn the terminal's echo
and line mode off (:func:`hold_terminal`), before the slow imports: a key
typed while the client starts is then neither echoed raw nor lost, and shows
up once, in the prompt's input line.  This module therefore imports only
light standard modules at the top.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import ssl

PROG = "reactor-chat"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNDELIVERED = 3

_EPILOG = """\
modes:
  With a terminal on stdin and stdout: a prompt with line editing, history,
  Tab completion, timestamps and colour (off with NO_COLOR); messages you
  send show as pending until the server confirms them; a dropped connection
  is retried (0.5 s doubling to 30 s) without losing what you typed.
  /quit, bye, Ctrl-D (empty line) or Ctrl-C (empty line) log out.
  Otherwise (a pipe or a file): commands are read line by line, every server
  line is printed to stdout as it arrives (--raw: the wire form), and at bye
  or end of input the client logs out and waits for the server to confirm.
  While stdout is not read, the client stops reading the server: its memory
  stays bounded (and the server may cut off a client that does not read).

TLS:
  --tls verifies the server's certificate and its host name (the SERVER
  argument) against the system's CAs, or against --ca FILE; a failure is one
  line naming the reason and exit status 1.  --insecure skips verification,
  and says so on stderr: anyone on the path could then read and change
  everything.

commands:
  /msg <user> <text> | /broadcast <text> | /query [<user>] | /who | /quit | /help
  chat <user> "<message>" | broadcast <message> | users | help | bye

registered names:
  If the server asks for the password of USERNAME (it was registered with
  /register), it is asked for with no echo, or taken from the environment
  variable REACTOR_CHAT_PASSWORD (for scripts).  /register and /password
  (on a terminal) register the name and change its password.

exit status:
  0  logged out normally
  1  cannot connect (including a TLS certificate that fails verification),
     login refused, or the server went away (piped mode)
  2  wrong arguments or an invalid username
  3  piped mode: a line was refused (by the client or the server) or a
     message was not delivered
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


class _ShowVersion(argparse.Action):
    """--version: the package's version, looked up only when asked for (the
    server's package, imported for it, is not a cost of every start)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the program's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from reactor.version import version

        print(f"{PROG} {version()}")
        parser.exit()


def _prog() -> str:
    # Run as "python -m cli" argv[0] is .../cli/__main__.py; say so in messages.
    return "python -m cli" if Path(sys.argv[0]).name == "__main__.py" else PROG


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=_prog(),
        allow_abbrev=False,
        description="reactor-chat terminal client: log in to a reactor-chat server and chat.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_ShowVersion)
    parser.add_argument("server", help="server address or host name, e.g. 127.0.0.1")
    parser.add_argument("port", type=_port, help="server TCP port, e.g. 1234")
    parser.add_argument("username",
                        help="1-32 ASCII letters, digits, '_', '-' or '.', starting with "
                             "a letter or digit (case-insensitive)")
    parser.add_argument("--tls", action="store_true",
                        help="connect with TLS, verifying the server's certificate and host "
                             "name (against the system's CAs, or --ca)")
    parser.add_argument("--ca", metavar="FILE",
                        help="with --tls: trust the CA certificate(s) in FILE instead of the "
                             "system's")
    parser.add_argument("--insecure", action="store_true",
                        help="with --tls: do NOT verify the server's certificate (anyone on "
                             "the path can read and change everything)")
    parser.add_argument("--raw", action="store_true",
                        help="show the server's lines in their wire form (for scripts)")
    parser.add_argument("--bell", action="store_true",
                        help="ring the terminal bell when a direct message arrives")
    parser.add_argument("--timestamps", choices=("off", "HH:MM", "HH:MM:SS"),
                        default=None,
                        help="time on every line (default: HH:MM on a terminal, "
                             "off in piped mode)")
    parser.add_argument("--history-file", nargs="?", const="", default=None, metavar="PATH",
                        help="keep the input history across runs, in PATH or by default "
                             "in the user data directory (chat lines are private: off "
                             "unless asked for); write --history-file=PATH")
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


def hold_terminal() -> Callable[[], None]:
    """Turn off echo and line mode on a terminal at once; return what restores it.

    prompt_toolkit does the same when its prompt starts, but only after the
    imports (a few hundred milliseconds): keys typed before that would be
    echoed raw by the terminal and then shown again in the input line.
    """
    try:
        if not (sys.stdin is not None and sys.stdin.isatty()
                and sys.stdout is not None and sys.stdout.isatty()):
            return lambda: None
        import termios

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        quiet = termios.tcgetattr(fd)
        quiet[3] &= ~(termios.ECHO | termios.ICANON)
        quiet[6][termios.VMIN] = 1
        quiet[6][termios.VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
    except (OSError, ValueError, ImportError):
        return lambda: None

    def restore() -> None:
        with contextlib.suppress(OSError, termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    return restore


def main(argv: list[str] | None = None) -> int:
    restore = hold_terminal()
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C while starting up: nothing to log out of.
        return EXIT_FAILURE
    finally:
        restore()


def _main(argv: list[str] | None) -> int:
    _harden_streams()
    from protocol import ProtocolError, validate_username

    parser = build_parser()
    try:
        args = _parse(parser, argv)
        validate_username(args.username)
    except _UsageError as error:
        print(f"{PROG}: {error} (usage: {parser.prog} [options] SERVER PORT USERNAME; "
              "--help for more)", file=sys.stderr)
        return EXIT_USAGE
    except ProtocolError as error:
        print(f"{PROG}: invalid username: {error.reason}", file=sys.stderr)
        return EXIT_USAGE

    tls = None
    if args.tls or args.ca is not None or args.insecure:
        from cli.tls import INSECURE_WARNING, CAFileError, client_context

        if not args.tls:
            print(f"{PROG}: {'--ca' if args.ca is not None else '--insecure'} needs --tls "
                  f"(usage: {parser.prog} [options] SERVER PORT USERNAME; --help for more)",
                  file=sys.stderr)
            return EXIT_USAGE
        if args.ca is not None and args.insecure:
            print(f"{PROG}: --ca and --insecure contradict each other", file=sys.stderr)
            return EXIT_USAGE
        try:
            tls = client_context(args.ca, args.insecure)
        except CAFileError as error:
            print(f"{PROG}: {error}", file=sys.stderr)
            return EXIT_USAGE
        if args.insecure:
            print(INSECURE_WARNING, file=sys.stderr, flush=True)

    interactive = _is_terminal(sys.stdin) and _is_terminal(sys.stdout)
    stamps = args.timestamps or ("HH:MM" if interactive else "off")
    from cli.present import TIMESTAMP_FORMATS

    timestamps = TIMESTAMP_FORMATS[stamps]
    history = None
    if args.history_file is not None:
        history = Path(args.history_file) if args.history_file else _default_history()
    if interactive:
        from cli.interactive import Options, run_interactive

        return run_interactive(Options(
            host=args.server, port=args.port, name=args.username, raw=args.raw,
            bell=args.bell, timestamps=timestamps, history_file=history, tls=tls,
        ))
    return _run_piped(args, timestamps, tls)


def _default_history() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("reactor-chat")) / "history"


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse; an option-like word where the username goes is judged as a username.

    ``python -m cli HOST PORT -x`` is then refused with the username rule
    (which ``python -m cli HOST PORT -- -x`` gets too), not with "unrecognized
    arguments".
    """
    try:
        return parser.parse_args(argv)
    except _UsageError:
        args = sys.argv[1:] if argv is None else argv
        known = {"--raw", "--bell", "--timestamps", "--history-file", "-h", "--help",
                 "--tls", "--ca", "--insecure"}
        words = [word for word in args if word.split("=", 1)[0] not in known]
        positional = [word for word in words if not word.startswith("-")]
        odd = [word for word in words if word.startswith("-") and word != "--"]
        if len(positional) == 2 and len(odd) == 1:
            from protocol import validate_username

            validate_username(odd[0])  # raises ProtocolError with the rule
        raise


def _run_piped(args: argparse.Namespace, timestamps: str | None,
               tls: ssl.SSLContext | None = None) -> int:
    from cli.connection import ClientError, connect
    from cli.display import ServerLine
    from cli.piped import run_piped
    from cli.present import Presenter

    presenter = Presenter(args.username, timestamps)

    def show(line: ServerLine) -> None:
        text = line.text if args.raw else presenter.text(presenter.event(line.event, line.text))
        with contextlib.suppress(OSError):  # stdout closed early: see _flush_quietly
            print(text, flush=True)

    # Terminated or hung up is treated like Ctrl-C: once logged in, log out first.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    conn = None
    try:
        conn = connect(args.server, args.port, tls=tls)
        conn.log_in(args.username, show=show, password=_piped_password)
        return run_piped(conn, _stdin_fd(), sys.stdout, sys.stderr, args.username,
                         raw=args.raw, timestamps=timestamps)
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


def _piped_password(name: str, attempt: int) -> str | None:
    """The password, from REACTOR_CHAT_PASSWORD (once) or asked on the terminal.

    Never from stdin: in piped mode that is the script.  getpass reads the
    controlling terminal; without one there is nobody to ask.
    """
    from cli.connection import PASSWORD_VARIABLE

    from_environment = os.environ.get(PASSWORD_VARIABLE)
    if from_environment is not None:
        return from_environment if attempt == 1 and from_environment else None
    try:
        os.close(os.open("/dev/tty", os.O_RDWR))
    except OSError:
        return None
    import getpass

    try:
        return getpass.getpass(f"Password for {name}: ") or None
    except (EOFError, OSError):
        return None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _is_terminal(stream: TextIO | None) -> bool:
    return stream is not None and stream.isatty()


def _stdin_fd() -> int:
    # Started with stdin closed (``<&-``): behave as if it were empty.
    return sys.stdin.fileno() if sys.stdin is not None else os.open(os.devnull, os.O_RDONLY)


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
