"""The C receiver (``creceiver.c``): compiled at run time, driven like the Python one.

``build()`` compiles the source once per source version with the machine's C
compiler (``$CC``, ``cc``, ``gcc`` or ``clang``) into a per-user cache
directory, and returns ``None`` with a reason when it cannot, so the benchmark
falls back to the Python receiver.  ``build(tls=True)`` compiles a second
binary from the same source with ``-DWITH_TLS``, linked with OpenSSL, for the
TLS system's clients; it fails on its own (no ``libssl-dev``) and leaves the
plain one alone.  ``CReceiverProc`` starts one compiled
receiver and gives the fleet the same ``send``/``poll``/``recv`` surface a
``multiprocessing`` pipe has, translating the tuples of
``bench.harness.receiver`` to the line commands of the C program and its
replies back to the same dicts of counters and ``array('q')`` records.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import shutil
import struct
import subprocess
import tempfile
from array import array
from collections import deque
from pathlib import Path
from typing import Any

from bench.harness.receiver import Share

SOURCE = Path(__file__).with_name("creceiver.c")
_KEYS = ("b_seq", "b_lat", "b_klat", "d_seq", "d_lat", "d_klat", "p_seq", "p_ts", "p_kts")
_STATUS = (
    "logged_in",
    "inflight",
    "notices",
    "last_notice_ns",
    "dropped",
    "connect_errors",
    "bad",
    "b",
    "d",
    "p",
    "last_record_ns",
)
_built: dict[tuple[str, bool], tuple[Path | None, str]] = {}
#: Extra compiler arguments of the TLS build (after the source: the libraries).
TLS_FLAGS = ("-DWITH_TLS",)
TLS_LIBS = ("-lssl", "-lcrypto")


def compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and (path := shutil.which(name)):
            return path
    return None


def build(tls: bool = False) -> tuple[Path | None, str]:
    """(path of the compiled receiver, description) or (None, why not).

    With ``tls``, the receiver that can speak TLS (OpenSSL), built apart.
    """
    cc = compiler()
    if cc is None:
        return None, "no C compiler found ($CC, cc, gcc, clang)"
    if (cc, tls) in _built:
        return _built[cc, tls]
    flags, libs = (TLS_FLAGS, TLS_LIBS) if tls else ((), ())
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + cc.encode() + " ".join(flags).encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"reactor-chat-bench-{os.getuid()}"
    exe = cache / f"creceiver-{'tls-' if tls else ''}{digest}"
    what = f"C ({Path(cc).name} -O2{', OpenSSL' if tls else ''})"
    result: tuple[Path | None, str]
    if exe.exists():
        result = exe, what
    else:
        cache.mkdir(mode=0o700, exist_ok=True)
        tmp = cache / f".creceiver-{digest}-{os.getpid()}"
        try:
            done = subprocess.run(
                [cc, "-O2", *flags, "-o", str(tmp), str(SOURCE), *libs],
                capture_output=True,
                text=True,
                timeout=120,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            done = None
            result = None, f"C receiver did not compile: {exc}"
        if done is not None and done.returncode == 0:
            os.replace(tmp, exe)  # atomic: a concurrent run sees all of it or nothing
            result = exe, what
        elif done is not None:
            why = done.stderr.strip()[:300]
            if tls and "openssl/ssl.h" in why:
                why = "no OpenSSL headers (apt-get install libssl-dev)"
            result = None, f"C receiver{' with TLS' if tls else ''} did not compile: {why}"
        with contextlib.suppress(OSError):
            tmp.unlink()
    _built[cc, tls] = result
    return result


class CReceiverProc:
    """One compiled receiver process, spoken to through its stdin and stdout."""

    def __init__(
        self,
        exe: Path,
        share: Share,
        logins: list[bytes],
        notices: list[bytes],
        delay_acks: bool = True,
    ) -> None:
        # Same process group as the benchmark (Ctrl-C is ignored inside, the parent
        # decides); PR_SET_PDEATHSIG inside ends it with a parent that dies.
        self.proc = subprocess.Popen(
            [str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )
        self.pid = self.proc.pid
        self.pending: deque[str] = deque()
        self.buf = bytearray()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.w, self.r = self.proc.stdin, self.proc.stdout
        head = (
            f"{share.host} {share.port} {share.window} {len(logins)} "
            f"{int(share.dialect != 'redis')} {os.getpid()} {int(delay_acks)} {int(share.tls)} "
            f"{int(share.dialect == 'web')}\n"
        ).encode()
        body = b"".join(
            struct.pack("=II", len(a), len(b)) + a + b for a, b in zip(logins, notices, strict=True)
        )
        self._write(head + body)
        if self._line(timeout=30.0) != b"R":
            raise ConnectionError("the C receiver did not start")

    # -- the multiprocessing.Connection surface the fleet uses ---------------
    def send(self, msg: tuple[Any, ...]) -> None:
        op = msg[0]
        if op == "login":
            self._write(b"L\n")
        elif op == "measure":
            self._write(b"M %d %d %d\n" % tuple(msg[1:]))
            self.pending.append("measure")
        elif op == "status":
            self._write(b"S\n")
            self.pending.append("status")
        elif op == "collect":
            self._write(b"C\n")
            self.pending.append("collect")
        elif op == "close":
            self._write(b"Q\n")
        else:
            raise ValueError(f"unknown receiver command {op!r}")

    def poll(self, timeout: float) -> bool:
        if self.buf:
            return True
        ready, _, _ = select.select([self.r], [], [], timeout)
        return bool(ready)

    def recv(self) -> dict[str, Any]:
        op = self.pending.popleft()
        if op == "measure":
            if self._line() != b"A":
                raise ConnectionError("the C receiver did not arm")
            return {"armed": True}
        if op == "status":
            fields = [int(x) for x in self._line().split()]
            out: dict[str, Any] = dict(zip(_STATUS, fields, strict=False))
            out["samples"] = [
                self._exact(int(self._line())).decode("utf-8", "replace") for _ in range(fields[-1])
            ]
            return out
        b_dup, d_dup, p_dup, nb, nd, np_ = (int(x) for x in self._line().split())
        out = {"b_dup": b_dup, "d_dup": d_dup, "p_dup": p_dup}
        for key, n in zip(_KEYS, (nb,) * 3 + (nd,) * 3 + (np_,) * 3, strict=True):
            out[key] = array("q", self._exact(8 * n))
        return out

    def close(self) -> None:
        for f in (self.w, self.r):
            with contextlib.suppress(OSError):
                f.close()

    def fileno(self) -> int:
        return self.r.fileno()

    # -- processes, as the fleet treats multiprocessing's ---------------------
    def join(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)

    def is_alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()

    # -- the pipes -------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self.w.write(view)
            if n is None:
                raise ConnectionError("the C receiver's pipe is full")
            view = view[n:]

    def _fill(self, timeout: float) -> None:
        ready, _, _ = select.select([self.r], [], [], timeout)
        if not ready:
            raise ConnectionError("the C receiver did not answer")
        chunk = os.read(self.r.fileno(), 1 << 20)
        if not chunk:
            raise ConnectionError("the C receiver exited")
        self.buf += chunk

    def _line(self, timeout: float = 60.0) -> bytes:
        while (i := self.buf.find(b"\n")) < 0:
            self._fill(timeout)
        line = bytes(self.buf[:i])
        del self.buf[: i + 1]
        return line

    def _exact(self, n: int, timeout: float = 60.0) -> bytes:
        while len(self.buf) < n:
            self._fill(timeout)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out
