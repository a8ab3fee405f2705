"""The cluster when a part fails: a node killed, Redis stopped.

``node_death``: SIGKILL of a node with K users; the time until the last
offline notice reached every observer on the other node, and the names free
again.  ``redis_stall``: SIGSTOP of redis-server, twice; offline notices
seen (false ones: no node died), and how DMs sent during and after each
stall were answered.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import time
from typing import Any

from bench.cluster_nodes import LEASE_DEFAULT, Nodes
from bench.harness import wire
from bench.harness.hub import Client, Hub
from bench.progress import Progress

NS = 1_000_000_000


def node_death(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """SIGKILL a node with K users; time to the last offline notice at every
    observer on the other node, and the names free again."""
    progress.set_stage("node death")
    k = args.kill_users
    nodes = Nodes(k + 64)
    hub = Hub()
    trials = []
    try:
        a = nodes.add()
        observers = hub.login(a.port, [f"o{j}" for j in range(3)])
        for trial in range(args.kill_trials):
            b = nodes.add()
            names = [f"v{trial}x{j}" for j in range(k)]
            victims = hub.login(b.port, names)
            online = [wire.online_notice(n) for n in names]
            hub.until(lambda on=online: all(o.find(x) for o in observers for x in on), 10.0)
            marks = [len(o.lines) for o in observers]
            t0 = time.monotonic_ns()
            os.kill(b.pid, signal.SIGKILL)  # type: ignore[arg-type]
            offline = [wire.offline_notice(n) for n in names]
            pairs = list(zip(observers, marks, strict=True))
            done = hub.until(
                lambda ps=pairs, off=offline: all(o.find(x, m) for o, m in ps for x in off), 20.0
            )
            times = [o.find(x, m) for o, m in zip(observers, marks, strict=True) for x in offline]
            seen = [t for t in times if t is not None]
            dup = sum(o.count(x, m) for o, m in zip(observers, marks, strict=True)
                      for x in offline) - len(seen)  # fmt: skip
            for v in victims:
                hub.drop(v)
            nodes.remove(b)
            # The names are free again: one logs in on the surviving node.
            reuse = False
            try:
                [again] = hub.login(a.port, [names[0]], timeout=5.0)
                reuse = True
                again.send(b"bye\n")
                hub.settle(0.2)
                hub.drop(again)
            except (RuntimeError, OSError):
                pass
            trials.append({
                "complete": done,
                "first_s": (min(seen) - t0) / NS if seen else None,
                "last_s": (max(seen) - t0) / NS if done else None,
                "missing": len(times) - len(seen),
                "duplicated": dup,
                "names_reusable": reuse,
            })  # fmt: skip
            if args.verbose:
                progress.note(f"node death {trial + 1}: {trials[-1]['last_s']}")
    finally:
        hub.close()
        nodes.stop()
    lasts = [t["last_s"] for t in trials if t["last_s"] is not None]
    return {
        "users": k,
        "observers": 3,
        "lease_s": LEASE_DEFAULT,
        "trials": trials,
        "last_median_s": statistics.median(lasts) if lasts else None,
        "last_max_s": max(lasts) if len(lasts) == len(trials) and lasts else None,
    }


def redis_stall(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """SIGSTOP redis-server for ``--stall`` seconds, twice; count offline
    notices (there should be none) and classify the answers to DMs sent during
    and after each stall."""
    progress.set_stage("Redis stall")
    k = args.stall_users
    nodes = Nodes(2 * k + 64)
    hub = Hub()
    trials = []
    try:
        a, b = nodes.add_many(2)
        ua = hub.login(a.port, [f"sa{j}" for j in range(k)])
        ub = hub.login(b.port, [f"sb{j}" for j in range(k)])
        everyone = ua + ub
        hub.settle(0.5)
        sender, local, remote = ua[0], ua[1], ub[0]
        for trial in range(args.stall_trials):
            marks = {c.name: len(c.lines) for c in everyone}
            texts: list[tuple[Client, bytes]] = []

            def dm(to: Client, when: str, trial: int = trial, texts: list = texts) -> None:
                text = b"stall%d-%s-%s" % (trial, when.encode(), to.name.encode())
                texts.append((to, text))
                sender.send(b'chat %s "%s"\n' % (to.name.encode(), text))

            os.kill(nodes.redis_proc.pid, signal.SIGSTOP)
            t0 = time.monotonic()
            try:
                hub.settle(args.stall / 3)
                dm(local, "during")
                dm(remote, "during")
                hub.settle(max(0.0, args.stall - (time.monotonic() - t0)))
            finally:
                os.kill(nodes.redis_proc.pid, signal.SIGCONT)
            stalled = time.monotonic() - t0
            hub.settle(1.0)
            dm(local, "after")
            dm(remote, "after")
            hub.settle(args.stall_watch)
            answers: dict[str, int] = {}
            # Each DM's answer by when it was sent and where its recipient is.
            dms: dict[str, str] = {}
            false_echoes = lost_echoed = 0
            for to, text in texts:
                line = next((ln for _, ln in sender.lines[marks[sender.name]:] if text in ln), b"")
                if not line:
                    # A refusal does not repeat the text: it names the recipient.
                    refusal = b"<Message to %s not delivered" % to.name.encode()
                    refused = [ln for _, ln in sender.lines[marks[sender.name]:]
                               if ln.startswith(refusal)]
                    if refused:
                        line = refused[0]
                kind = ("echo" if line.startswith(b"<To ")
                        else "not delivered" if b" not delivered: " in line
                        else line.split(b":")[0].decode()[:30])
                answers[kind or "no answer"] = answers.get(kind or "no answer", 0) + 1
                when = "during" if b"-during-" in text else "after"
                dms[f"{when}, {'same node' if to is local else 'other node'}"] = kind or "no answer"
                got = to.find(text, marks[to.name]) is not None
                if kind == "echo" and not got:
                    false_echoes += 1
                if not got and kind == "echo":
                    lost_echoed += 1
            offline = sum(c.count(b" is offline.>", marks[c.name]) for c in everyone)
            trials.append({
                "stalled_s": stalled,
                "offline_notices": offline,
                "disconnected": sum(1 for c in everyone if c.closed),
                "answers": answers,
                "dms": dms,
                "false_echoes": false_echoes,
                "after_delivered": sum(1 for to, t in texts if b"after" in t
                                       and to.find(t, marks[to.name]) is not None),
            })  # fmt: skip
    finally:
        hub.close()
        nodes.stop()
    return {
        "users": 2 * k,
        "stall_s": args.stall,
        "trials": trials,
        "offline_notices": sum(t["offline_notices"] for t in trials),
        "false_echoes": sum(t["false_echoes"] for t in trials),
    }

