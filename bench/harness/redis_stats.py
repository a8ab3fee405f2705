"""What a redis-server did between two moments, from its INFO counters.

``RedisStats.snap`` takes a snapshot; ``delta`` is what Redis did between
two (commands, script calls, stream reads, CPU; its own INFO calls taken
off); ``per_op`` divides that by the operations measured, after taking off
what the idle server did over the same time (lease renewals, blocked reads).
"""

from __future__ import annotations

import time
from typing import Any


class RedisStats:
    """Snapshots of one redis-server's counters (INFO), for deltas."""

    def __init__(self, port: int, pid: int | None = None) -> None:
        import redis

        self.r = redis.Redis(port=port, socket_timeout=5)
        self.pid = pid

    def snap(self) -> dict[str, Any]:
        info = self.r.info("all")
        calls = {k[8:]: v["calls"] for k, v in info.items() if k.startswith("cmdstat_")}
        return {
            "t": time.monotonic(),
            "total": info["total_commands_processed"],
            "calls": calls,
            "cpu": info["used_cpu_user"] + info["used_cpu_sys"],
        }

    def close(self) -> None:
        self.r.close()


def delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What Redis did between snapshots ``a`` and ``b`` (its own INFO calls taken off)."""
    calls = {k: v - a["calls"].get(k, 0) for k, v in b["calls"].items()}
    calls = {k: v for k, v in calls.items() if v and k not in ("info",)}
    info_calls = b["calls"].get("info", 0) - a["calls"].get("info", 0)
    scripts = sum(v for k, v in calls.items() if k in ("evalsha", "eval", "fcall", "script|load"))
    reads = sum(v for k, v in calls.items() if k in ("xread", "xreadgroup"))
    return {
        "seconds": b["t"] - a["t"],
        "commands": b["total"] - a["total"] - info_calls,
        "scripts": scripts,
        "reads": reads,
        "calls": calls,
        "cpu_s": b["cpu"] - a["cpu"],
    }


def per_op(d: dict[str, Any], ops: int, idle: dict[str, Any] | None) -> dict[str, Any]:
    """Commands (and script calls, reads, Redis CPU) per operation, the idle
    cluster's rate over the same time taken off."""
    if not ops:
        return {}
    out = {"ops": ops, "seconds": d["seconds"]}
    for key in ("commands", "scripts", "reads", "cpu_s"):
        base = idle[key] / idle["seconds"] * d["seconds"] if idle and idle["seconds"] > 0 else 0
        out[key] = max(0.0, d[key] - base) / ops
    out["calls"] = {k: v / ops for k, v in sorted(d["calls"].items(), key=lambda kv: -kv[1])}
    out["redis_us_per_command"] = d["cpu_s"] / d["commands"] * 1e6 if d["commands"] else None
    return out

