"""Soak: 2,000 clients through minutes of mixed traffic, nothing lost (opt in).

    python -m pytest -m soak -s tests/system/test_soak.py

On each backend a server runs as its own process on loopback; one asyncio
driver here holds every client.  Stable clients exchange direct messages at a
steady rate, broadcast now and then and ask for ``users``; a smaller set of
churners keeps logging in and saying bye.  Every direct message must reach
its recipient exactly once, and every broadcast each stable client exactly
once; latency is measured from the sender's write to the recipient's read
(one clock: the same process).  The figures are printed at the end.

Knobs (environment): SOAK_CLIENTS (2000), SOAK_SECONDS (150 per backend),
SOAK_RATE (direct messages per second, 400).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from tests.faults import raise_own_open_file_limit, server_process

pytestmark = pytest.mark.soak

CLIENTS = int(os.environ.get("SOAK_CLIENTS", "2000"))
SECONDS = float(os.environ.get("SOAK_SECONDS", "150"))
RATE = float(os.environ.get("SOAK_RATE", "400"))
CHURNERS = 20
BROADCAST_EVERY = 2.0
USERS_EVERY = 1.0


@dataclass
class Tally:
    expected: Counter[str] = field(default_factory=Counter)  # "id@recipient" -> 1
    received: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    disconnected: list[str] = field(default_factory=list)
    other_lines: Counter[str] = field(default_factory=Counter)


async def _reader(name: str, reader: asyncio.StreamReader, tally: Tally, stable: bool) -> None:
    while True:
        line = await reader.readline()
        if not line:
            if stable:
                tally.disconnected.append(name)
            return
        if line.startswith((b"<Message from ", b"<Broadcast from ")) and stable:
            # ...: "<id> <sent-at>">
            body = line[line.index(b'"') + 1 : line.rindex(b'"')].decode()
            ident, sent_at = body.split(" ")
            tally.received[f"{ident}@{name}"] += 1
            tally.latencies.append(time.monotonic() - float(sent_at))
        else:
            tally.other_lines[line.split(b" ", 2)[0].decode()] += 1


async def _login(port: int, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{name}\n".encode())
    line = await reader.readline()
    assert line == f"<User {name} is online.>\n".encode(), line
    return reader, writer


async def _drive(port: int) -> dict[str, object]:
    tally = Tally()
    rng = random.Random(2000)
    names = [f"c{index:04d}" for index in range(CLIENTS)]
    writers: dict[str, asyncio.StreamWriter] = {}
    readers: list[asyncio.Task[None]] = []
    connect_started = time.monotonic()
    for start in range(0, CLIENTS, 100):
        batch = names[start : start + 100]
        for name, (reader, writer) in zip(
            batch, await asyncio.gather(*(_login(port, n) for n in batch)), strict=True
        ):
            writers[name] = writer
            readers.append(asyncio.create_task(_reader(name, reader, tally, True)))
    connect_seconds = time.monotonic() - connect_started

    stop = asyncio.Event()
    counts: Counter[str] = Counter()

    async def churn(index: int) -> None:
        name = f"churn{index:02d}"
        while not stop.is_set():
            reader, writer = await _login(port, name)
            task = asyncio.create_task(_reader(name, reader, tally, False))
            await asyncio.sleep(rng.uniform(0.2, 2.0))
            writer.write(b"bye\n")
            await task  # until the server closes
            writer.close()
            counts["churn logins"] += 1

    async def traffic() -> None:
        period = 1.0 / RATE
        next_at = time.monotonic()
        next_broadcast = next_at + BROADCAST_EVERY
        next_users = next_at + USERS_EVERY
        ident = 0
        while not stop.is_set():
            now = time.monotonic()
            while next_at <= now:
                sender, recipient = rng.sample(names, 2)
                ident += 1
                tally.expected[f"d{ident}@{recipient}"] += 1
                writers[sender].write(f'chat {recipient} "d{ident} {time.monotonic()!r}"\n'.encode())
                counts["direct"] += 1
                next_at += period
            if now >= next_broadcast:
                sender = rng.choice(names)
                ident += 1
                for other in names:
                    if other != sender:
                        tally.expected[f"b{ident}@{other}"] += 1
                writers[sender].write(f'broadcast "b{ident} {time.monotonic()!r}"\n'.encode())
                counts["broadcast"] += 1
                next_broadcast += BROADCAST_EVERY
            if now >= next_users:
                writers[rng.choice(names)].write(b"users\n")
                counts["users"] += 1
                next_users += USERS_EVERY
            await asyncio.sleep(0.005)

    churners = [asyncio.create_task(churn(index)) for index in range(CHURNERS)]
    traffic_started = time.monotonic()
    sender = asyncio.create_task(traffic())
    await asyncio.sleep(SECONDS)
    stop.set()
    await sender
    await asyncio.wait_for(asyncio.gather(*churners), timeout=30)
    traffic_seconds = time.monotonic() - traffic_started

    # Everything sent must arrive; give the tail a bounded time.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(
        tally.received[key] < count for key, count in tally.expected.items()
    ):
        await asyncio.sleep(0.5)
    lost = sum(max(0, count - tally.received[key]) for key, count in tally.expected.items())
    duplicated = sum(max(0, tally.received[key] - count) for key, count in tally.received.items())
    unexpected = sum(1 for key in tally.received if key not in tally.expected)

    dropped_during_run = len(tally.disconnected)
    for writer in writers.values():
        writer.write(b"bye\n")
    await asyncio.wait_for(asyncio.gather(*readers), timeout=60)
    for writer in writers.values():
        writer.close()

    latencies = sorted(tally.latencies)
    return {
        "clients": CLIENTS,
        "churners": CHURNERS,
        "connect_seconds": round(connect_seconds, 1),
        "traffic_seconds": round(traffic_seconds, 1),
        "direct_messages": counts["direct"],
        "broadcasts": counts["broadcast"],
        "users_requests": counts["users"],
        "churn_logins": counts["churn logins"],
        "deliveries_expected": sum(tally.expected.values()),
        "deliveries_received": sum(tally.received.values()),
        "lost": lost,
        "duplicated": duplicated,
        "unexpected": unexpected,
        "disconnected_stable_clients": dropped_during_run,
        "latency_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "latency_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        "latency_max_ms": round(latencies[-1] * 1000, 1),
    }


@pytest.mark.timeout(SECONDS + 300)
def test_2000_clients_for_minutes_lose_nothing(backend: str) -> None:
    raise_own_open_file_limit(CLIENTS + CHURNERS + 512)
    with server_process(backend, "--max-clients", str(CLIENTS + CHURNERS + 16)) as server:
        rss_before = server.rss()
        figures = asyncio.run(_drive(server.port))
        figures["backend"] = backend
        figures["server_rss_mib_before"] = round(rss_before / 2**20)
        figures["server_rss_mib_peak"] = round(server.peak_rss() / 2**20)
        figures["server_cpu_seconds"] = round(server.cpu_seconds(), 1)
        assert server.process.poll() is None
    print("\nSOAK", figures)
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0
    assert figures["unexpected"] == 0
    assert figures["disconnected_stable_clients"] == 0
