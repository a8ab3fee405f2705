"""Names are unique across the cluster: two clients on two nodes claiming one
name at the same moment (in different cases), 300 times; exactly one wins
each time, and everyone hears of that one only."""

from __future__ import annotations

import socket

import pytest

from tests.cluster_support import (
    NO_FLOOD_CONTROL,
    LineReader,
    RedisServer,
    cluster_clients,
    eventually_lists,
    nodes,
    redis_server,  # noqa: F401  (a fixture)
)

TRIES = 300


@pytest.mark.parametrize("pair", [("select", "threads"), ("asyncio", "select")],
                         ids=["select+threads", "asyncio+select"])
def test_of_two_nodes_racing_for_one_name_exactly_one_wins_every_time(
    redis_server: RedisServer, pair: tuple[str, str],  # noqa: F811
) -> None:
    with nodes(pair, redis_server.url, flood=NO_FLOOD_CONTROL) as servers, \
            cluster_clients([s.port for s in servers]) as pool:
        watchers = [pool.login(0, "WatchA"), pool.login(1, "WatchB")]
        watchers[0].read_until(lambda line: line == "<User WatchB is online.>")
        winners: list[str] = []
        for i in range(TRIES):
            spellings = [f"racer{i}", f"RACER{i}" if i % 2 else f"Racer{i}"]
            # Both connected first, then both names written back to back.
            socks = [socket.create_connection(("127.0.0.1", s.port)) for s in servers]
            try:
                for sock, name in zip(socks, spellings, strict=True):
                    sock.sendall(name.encode() + b"\n")
                reader = LineReader(socks)
                reader.read_until(lambda r=reader: all(r.lines.values()), message=f"try {i}")
                results = [reader.lines[sock] for sock in socks]
                # (Only the first line of each: other presence notices may follow.)
                won = [k for k in range(2)
                       if results[k][0] == f"<User {spellings[k]} is online.>".encode()]
                assert len(won) == 1, (i, results)
                winner = spellings[won[0]]
                assert results[1 - won[0]][0] == (
                    f"<Username {winner} is already taken.>".encode()), (i, results)
                socks[won[0]].sendall(b"bye\n")
                reader.read_until(lambda r=reader, s=socks[won[0]]: s in r.closed,
                                  message=f"try {i}: bye")
                assert reader.lines[socks[won[0]]][-1] == f"<User {winner} is offline.>".encode()
                reader.close()
            finally:
                for sock in socks:
                    sock.close()
            winners.append(winner)
        # Each watcher heard of each winner once online then once offline, and
        # of no loser.  (The order across names is checked by the conformance
        # tests; here only who won matters.)
        for watcher in watchers:
            lines = eventually_lists(watcher, ["WatchA", "WatchB"], timeout=30)
            heard: dict[str, list[str]] = {}
            for line in lines:
                if "racer" in line.casefold():
                    heard.setdefault(line.split()[1], []).append(line)
            assert heard == {w: [f"<User {w} is online.>", f"<User {w} is offline.>"]
                             for w in winners}
