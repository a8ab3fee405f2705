"""A minimal asyncio chat server speaking the reactor-chat protocol: the yardstick.

This is what a Python programmer would write instead of our server in an
afternoon: asyncio streams, one coroutine per client, a dict of writers, and
``writer.write`` to every recipient (only the sender's own writer is drained,
so a slow recipient buffers without bound -- the usual shortcut).  It is kept
deliberately plain, and self-contained (no import of ``reactor`` or
``protocol``), so the benchmark compares our server with the obvious
alternative rather than with a tuned one.

Run: ``python bench/peers/asyncio_server.py --port 0``; like the real server it
prints ``[Server] Listening on port N...`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys

NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
HELP = '<Commands: chat <user> "<message>", broadcast "<message>", users, help, bye>'


def unquote(text: str) -> str | None:
    """The message inside ``"..."`` with ``\\"`` and ``\\\\`` undone, or None."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return None
    out: list[str] = []
    body = text[1:-1]
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body) and body[i + 1] in '"\\':
            out.append(body[i + 1])
            i += 2
            continue
        if ch == '"':
            return None
        out.append(ch)
        i += 1
    return "".join(out)


def quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


class ChatServer:
    def __init__(self, max_clients: int) -> None:
        self.max_clients = max_clients
        # lower-cased name -> (display name, writer)
        self.users: dict[str, tuple[str, asyncio.StreamWriter]] = {}

    def send_all(self, line: str) -> None:
        data = (line + "\n").encode()
        for _, writer in self.users.values():
            writer.write(data)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        name = None
        try:
            if len(self.users) >= self.max_clients:
                writer.write(b"<Server is full.>\n")
                return
            raw = await reader.readline()
            name = raw.decode("utf-8", "replace").strip()
            if not NAME.fullmatch(name):
                writer.write(b"<Invalid username.>\n")
                name = None
                return
            if name.lower() in self.users:
                writer.write(f"<Username {name} is already taken.>\n".encode())
                name = None
                return
            self.users[name.lower()] = (name, writer)
            self.send_all(f"<User {name} is online.>")
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                if not self.command(name, writer, raw.decode("utf-8", "replace").strip()):
                    break
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            if name is not None and self.users.get(name.lower(), (None, None))[1] is writer:
                del self.users[name.lower()]
                self.send_all(f"<User {name} is offline.>")
            writer.close()

    def command(self, name: str, writer: asyncio.StreamWriter, line: str) -> bool:
        """Act on one command line; False means the client said bye."""
        verb, _, rest = line.partition(" ")
        if verb == "chat":
            to, _, quoted = rest.partition(" ")
            text = unquote(quoted)
            target = self.users.get(to.lower())
            if text is None:
                writer.write(b'<Usage: chat <user> "<message>">\n')
            elif target is None:
                writer.write(f"<User {to} is not online.>\n".encode())
            else:
                target[1].write(f'<Message from {name}: "{quote(text)}">\n'.encode())
                writer.write(f"<To {target[0]}> {text}\n".encode())
        elif verb == "broadcast":
            text = unquote(rest)
            if text is None:
                writer.write(b'<Usage: broadcast "<message>">\n')
            else:
                data = f'<Broadcast from {name}: "{quote(text)}">\n'.encode()
                for key, (_, other) in self.users.items():
                    if key != name.lower():
                        other.write(data)
                writer.write(f"<To everyone> {text}\n".encode())
        elif verb == "users":
            names = ", ".join(display for display, _ in self.users.values())
            writer.write(f"<Online users: {names}>\n".encode())
        elif verb == "help":
            writer.write((HELP + "\n").encode())
        elif verb == "bye":
            return False
        else:
            writer.write(f"<Unknown command {verb}.>\n".encode())
        return True


async def serve(host: str, port: int, max_clients: int) -> None:
    chat = ChatServer(max_clients)
    server = await asyncio.start_server(chat.handle, host, port)
    bound = server.sockets[0].getsockname()[1]
    print(f"[Server] Listening on port {bound}...", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-clients", type=int, default=10_000)
    # Accepted for command-line parity with `python -m reactor`; this server logs nothing.
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    try:
        asyncio.run(serve(args.host, args.port, args.max_clients))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
