"""``python -m reactor.accounts --db PATH|URL COMMAND``: the operator's tools.

``--db`` is what the server was given with ``--accounts``: a SQLite file, or
the Redis URL of a cluster (its ``--cluster`` URL when ``--accounts`` had no
value).

* ``list`` -- every registered name, when it was registered and when its
  password last changed (UTC), and its hash scheme;
* ``remove NAME`` -- forget the name: it is open again from the next login;
  what the history file beside a SQLite store keeps of it goes too (its
  waiting messages and its direct conversations);
* ``reset NAME`` -- give a registered name a new password, asked for with
  ``getpass`` (twice) on a terminal, or read as one line from stdin
  otherwise (``printf '%s\\n' "$PW" | python -m reactor.accounts ... reset Alice``);
  with ``--create`` the name need not be registered yet;
* ``op NAME`` / ``deop NAME`` -- make a registered name a chat operator (who
  may kick, ban, unban, mute, unmute and list bans), or no longer one.

These work on the store while servers use it (SQLite in WAL mode, or Redis);
the servers see a change at the next login.  Exit status: 0 done, 1 no such
name or the store cannot be used, 2 wrong arguments or an unfit password.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time

from protocol import ProtocolError, password_problem, username_key, validate_username
from reactor.accounts.hashing import SCRYPT_DEFAULT, hasher_from_spec
from reactor.accounts.store import AccountStore, StoreUnavailable
from reactor.app import forget_stored_messages, open_store
from reactor.redis.url import LinkError

PROG = "python -m reactor.accounts"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="List, remove and reset the registered names of a "
                               "reactor-chat server (its --accounts file or Redis).")
    parser.add_argument("--db", required=True, metavar="PATH|URL",
                        help="the server's --accounts: a SQLite file, or a Redis URL "
                             "(a cluster's --cluster URL)")
    parser.add_argument("--password-hash", default="scrypt", metavar="SCHEME",
                        help="hash for the new password of reset: scrypt or argon2id, "
                             "with optional parameters (default: scrypt:ln={ln},r={r},p={p})"
                        .format(**SCRYPT_DEFAULT))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("list", help="list the registered names")
    remove = commands.add_parser("remove", help="forget a registered name")
    remove.add_argument("name")
    reset = commands.add_parser("reset", help="set a new password for a registered name")
    reset.add_argument("name")
    reset.add_argument("--create", action="store_true",
                       help="register the name if it is not registered yet")
    commands.add_parser("op", help="make a registered name a chat operator").add_argument("name")
    commands.add_parser("deop", help="make an operator an ordinary user again").add_argument(
        "name")
    return parser


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp))


def _read_password(name: str) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(f"New password for {name}: ")
        if getpass.getpass("Again: ") != first:
            raise ValueError("the two passwords differ")
        return first
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        store = open_store(args.db)
    except (StoreUnavailable, LinkError) as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 1
    for warning in store.warnings():
        print(f"{PROG}: {warning}", file=sys.stderr)
    try:
        return _run(args, store)
    except StoreUnavailable as error:  # e.g. Redis went away meanwhile
        print(f"{PROG}: {error}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _run(args: argparse.Namespace, store: AccountStore) -> int:
    if args.command == "list":
        accounts = store.accounts()
        operators = set(store.operators())
        for account in accounts:
            scheme = account.password_hash.split("$")[1] if "$" in account.password_hash else "?"
            role = "\toperator" if username_key(account.name) in operators else ""
            print(f"{account.name}\tregistered {_when(account.created)}\t"
                  f"password set {_when(account.updated)}\t{scheme}{role}")
        print(f"{len(accounts)} registered name{'' if len(accounts) == 1 else 's'}",
              file=sys.stderr)
        return 0
    name = args.name
    try:
        validate_username(name)
    except ProtocolError as error:
        print(f"{PROG}: {name!r} is not a username: {error.reason}", file=sys.stderr)
        return 2
    if args.command in ("op", "deop"):
        if not store.set_operator(name, args.command == "op"):
            print(f"{PROG}: {name} is not registered (only a registered name can be an "
                  "operator)", file=sys.stderr)
            return 1
        print(f"{name} is {'now' if args.command == 'op' else 'no longer'} an operator.")
        return 0
    if args.command == "remove":
        removed = store.get(name)
        if removed is None or not store.remove(name):
            print(f"{PROG}: {name} is not registered", file=sys.stderr)
            return 1
        forget_stored_messages(args.db, name)
        print(f"Removed {removed.name}; the name is open again.")
        return 0
    # reset
    if store.get(name) is None and not args.create:
        print(f"{PROG}: {name} is not registered (--create registers it)", file=sys.stderr)
        return 1
    try:
        hasher = hasher_from_spec(args.password_hash)
        password = _read_password(name)
    except ValueError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    except (EOFError, KeyboardInterrupt):
        print(f"{PROG}: no password given; nothing changed", file=sys.stderr)
        return 2
    problem = password_problem(password)
    if problem is not None:
        print(f"{PROG}: {problem}; nothing changed", file=sys.stderr)
        return 2
    password_hash = hasher.hash(password)
    if store.set_password(name, password_hash):
        print(f"New password set for {name}.")
    elif args.create and store.create(name, password_hash):
        print(f"Registered {name}.")
    else:
        print(f"{PROG}: {name} is not registered", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
