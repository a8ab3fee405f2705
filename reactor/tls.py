"""TLS for every backend: the server's context, its checks, and a sans-IO layer.

Three parts, so that no backend re-implements TLS:

* :func:`load_context` builds the server's :class:`ssl.SSLContext` with
  secure defaults (TLS 1.2 at least, the ``ssl`` module's default ciphers,
  renegotiation off) and turns every problem with the certificate and key
  files into one line naming it (:class:`TLSSetupError`).
* :class:`TLSCertificate` holds the context in use and reloads it (SIGHUP):
  new connections get the new context, established ones keep theirs, and
  bad new files leave the old context in place.
* :class:`TLSWire` is one connection's TLS, over a pair of
  :class:`ssl.MemoryBIO` (as CPython's ``asyncio/sslproto.py`` does): the
  backend still reads and writes a plain non-blocking socket, hands what it
  read to :meth:`TLSWire.receive`, and sends what :meth:`TLSWire.buffers`
  gives it, reporting back with :meth:`TLSWire.consume`.  It never blocks and
  never touches a socket.

**Handoffs stay exact.**  A connection's :class:`~reactor.outbuf.OutputBuffer`
holds plaintext.  :class:`TLSWire` encrypts from its head only when all the
ciphertext made before has been taken by the kernel, and remembers how much
plaintext each piece of ciphertext completes; only when the kernel has taken
the last byte of a piece does it ``consume`` that plaintext from the buffer,
which runs the handoffs (the ``<To Bob>`` echo) of the messages it carried.
Plaintext not yet encrypted can still be withdrawn; once encrypted, it is
marked started.  :class:`TLSWire` offers the same ``buffers``/``consume``
pair as the plain buffer, so a backend's send path is the same for both.

**A fast path for a backend that wants one** (the select backend's): when
no ciphertext waits, :meth:`TLSWire.seal` encrypts one message straight
from the caller, and :meth:`TLSWire.seal_queue` the whole queue in one
record, for a send at once; what the kernel does not take is handed back
(:meth:`TLSWire.keep`, :meth:`TLSWire.keep_sealed`) and waits as above.
The handoffs stay exact: the caller runs them only once the kernel took
all the ciphertext.  A fan-out's delivery then costs one record, one send
and no Python objects but the ciphertext.

Not thread-safe: the threads backend makes every call under the
connection's send lock (OpenSSL forbids using one SSL object from two
threads at once, and a lock held across a blocking ``SSL_read`` would stop
the writer thread).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from reactor.metrics import Metric, counter
from reactor.outbuf import Entry, Handoff, OutputBuffer

log = logging.getLogger("reactor")

# Plaintext encrypted at once: one sendmsg's worth, like the plain path's
# 256 buffers.  More waits, unencrypted and withdrawable, in the output queue.
BATCH_SIZE = 256 * 1024
# The TLS maximum of plaintext per record.  Small entries are encrypted
# together into records of this size, each full but the last: a record costs
# OpenSSL about as much work whatever its size, and the peer as much to
# decrypt.  A handoff then waits for the whole record, which is still the
# truth, a little later.
RECORD_SIZE = 16 * 1024
# Plaintext read out of the SSL object per call, until it has no more.
READ_SIZE = 64 * 1024


class TLSSetupError(Exception):
    """A problem with the certificate or key files, in one line."""


class TLSFailure(Exception):
    """The peer does not speak TLS, or broke it; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- the server's context ------------------------------------------------------------


def load_context(cert: str, key: str, password_file: str | None = None) -> ssl.SSLContext:
    """A server context for ``cert`` and ``key``; raises :class:`TLSSetupError`."""
    for what, path in (("certificate", cert), ("key", key), ("key password", password_file)):
        if path is not None:
            _check_readable(what, path)
    password: str | Callable[[], str] = _no_password(key)
    if password_file is not None:
        password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        # The certificate alone first, so that a bad one is named as such.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_verify_locations(cafile=cert)
    except ssl.SSLError:
        raise TLSSetupError(f"{cert}: no PEM certificate in it") from None
    try:
        context.load_cert_chain(cert, key, password)
    except TLSSetupError:
        raise
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise TLSSetupError(f"{key}: the key does not match the certificate {cert}") from None
        if password_file is not None:
            raise TLSSetupError(f"{key}: cannot load the key (wrong password in "
                                f"{password_file}?)") from None
        raise TLSSetupError(f"{key}: no PEM private key in it") from None
    return context


def _check_readable(what: str, path: str) -> None:
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as error:
        reason = error.strerror or str(error)
        raise TLSSetupError(f"cannot read the {what} file {path}: {reason}") from None


def _no_password(key: str) -> Callable[[], str]:
    # Without this OpenSSL would ask for the password on the terminal.
    def ask() -> str:
        raise TLSSetupError(f"{key}: the key is encrypted; give its password with "
                            "--tls-key-password-file")

    return ask


class HandshakeCounts:
    """TLS handshakes completed and failed (the peer does not speak TLS, or
    broke it, before the handshake completed), for ``/metrics``.

    Counted under a lock: the threads backend runs handshakes on the
    connections' own threads.  Once per connection, so the lock costs
    nothing worth keeping a cheaper scheme for."""

    __slots__ = ("completed", "failed", "_lock")

    def __init__(self) -> None:
        self.completed = 0
        self.failed = 0
        self._lock = threading.Lock()

    def count(self, completed: bool) -> None:
        with self._lock:
            if completed:
                self.completed += 1
            else:
                self.failed += 1


class TLSCertificate:
    """The context new TLS connections get, reloadable while serving, and
    how their handshakes went (:class:`~reactor.contracts.Monitored`)."""

    def __init__(self, cert: str, key: str, password_file: str | None = None) -> None:
        self.cert, self.key, self.password_file = cert, key, password_file
        self.context = load_context(cert, key, password_file)
        self._lock = threading.Lock()
        self.handshakes = HandshakeCounts()

    def metrics(self) -> list[Metric]:
        return [counter("reactor_tls_handshakes_total",
                        "TLS handshakes with clients, by outcome (failed: the peer does not"
                        " speak TLS or broke it; a peer gone mid-handshake is neither).",
                        label="outcome", values={"completed": self.handshakes.completed,
                                                 "failed": self.handshakes.failed})]

    def unready_reason(self) -> str | None:
        return None

    def reload(self) -> bool:
        """Load the files again; on failure log one line and keep the old context."""
        with self._lock:
            try:
                context = load_context(self.cert, self.key, self.password_file)
            except (TLSSetupError, OSError, ValueError) as error:
                log.error("TLS certificate not reloaded, keeping the current one: %s", error)
                return False
            self.context = context  # one reference swap: connections opened from now on
        # Asked for by the operator: shown at any --log-level.
        log.log(max(logging.INFO, log.getEffectiveLevel()),
                "TLS certificate reloaded from %s", self.cert)
        return True


# -- one connection ------------------------------------------------------------------


def failure_reason(error: ssl.SSLError) -> str:
    """What a handshake failure means, for the one log line about it."""
    reason = error.reason or ""
    if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST",
                  "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL"):
        return f"not a TLS client hello ({reason.lower().replace('_', ' ')})"
    if reason:
        return reason.lower().replace("_", " ")
    return str(error)


def log_failure(host: str, failure: TLSFailure, handshake_done: bool) -> str:
    """The one log line for a TLS failure; returns the connection's close reason."""
    if handshake_done:
        log.warning("TLS error from %s: %s; closing that connection", host, failure.reason)
    else:
        log.warning("TLS handshake with %s failed: %s; closing that connection",
                    host, failure.reason)
    return f"TLS: {failure.reason}"


class TLSWire:
    """One server-side TLS connection over memory buffers; see the module docstring."""

    __slots__ = ("_in", "_out", "_ssl", "_write", "output", "handshake_done", "ended",
                 "failed", "size", "_pieces", "_notified", "_handshakes")

    def __init__(self, context: ssl.SSLContext, output: OutputBuffer,
                 handshakes: HandshakeCounts | None = None) -> None:
        self._handshakes = handshakes
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_side=True)
        # Encrypts one record: ssl.SSLObject.write is a one-line wrapper around
        # the C object's write, called here directly, a Python call less per
        # record (a fan-out makes one per recipient); the public method where
        # that object is not found.
        self._write: Callable[[bytes | memoryview], int] = getattr(
            self._ssl, "_sslobj", self._ssl).write
        self.output = output
        self.handshake_done = False
        self.ended = False  # the peer's TLS stream has ended (close_notify or EOF)
        self.failed = False  # no more encryption: only what is made may still go
        self.size = 0  # ciphertext bytes not yet taken by the kernel
        # [ciphertext still to send, plaintext bytes it completes]
        self._pieces: deque[list[bytes | memoryview | int]] = deque()
        self._notified = False

    def __bool__(self) -> bool:
        """Something can be sent now."""
        return bool(self._pieces) or (
            self.handshake_done and not self.failed and bool(self.output)
        )

    # -- input ---------------------------------------------------------------

    def receive(self, data: bytes) -> tuple[bytes, bool]:
        """Feed what the socket read (``b""`` at its end of input).

        Returns the plaintext it completes and whether the peer's stream
        ended just now.  Raises :class:`TLSFailure` if the peer does not speak
        TLS or fails the handshake; the alert for it is then in
        :meth:`buffers`.  Reads everything the SSL object holds, so that no
        plaintext waits inside it unseen.
        """
        if self.ended:
            return b"", False
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()
        chunks: list[bytes] = []
        try:
            if not self.handshake_done:
                try:
                    self._ssl.do_handshake()
                except ssl.SSLWantReadError:
                    if data:
                        return b"", False
                    self.ended = True  # closed before the handshake completed
                    return b"", True
                self.handshake_done = True
                if self._handshakes is not None:
                    self._handshakes.count(completed=True)
            while True:
                try:
                    chunk = self._ssl.read(READ_SIZE)
                except ssl.SSLWantReadError:
                    break
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    self.ended = True
                    break
                if not chunk:
                    self.ended = True
                    break
                chunks.append(chunk)
        except ssl.SSLEOFError:
            self.ended = True  # gone in the middle of the handshake
            return b"", True
        except ssl.SSLError as error:
            self.failed = True
            if not self.handshake_done and self._handshakes is not None:
                self._handshakes.count(completed=False)
            raise TLSFailure(failure_reason(error)) from None
        finally:
            self._collect()
        if not data:
            self.ended = True
        return b"".join(chunks), self.ended

    # -- output --------------------------------------------------------------

    def buffers(self) -> list[bytes | memoryview]:
        """Ciphertext to send, encrypting the head of the output queue if none waits."""
        pieces = self._pieces
        if not pieces and self.handshake_done and not self.failed and self.output:
            self._encrypt_batch()
        if len(pieces) == 1:
            return [pieces[0][0]]  # type: ignore[list-item]
        return [pieces[i][0] for i in range(min(len(pieces), 256))]  # type: ignore[misc]

    def seal(self, data: bytes) -> bytes | None:
        """``data`` encrypted now, for a send at once; None if it must queue.

        For the caller whose output queue is empty (it checks): with no
        ciphertext waiting either, ``data`` is next on the wire, so it is
        encrypted straight from the caller, with no queue entry, piece or
        list made for it.  What the kernel does not take goes to :meth:`keep`.
        """
        if self._pieces or not self.handshake_done or self.failed or self._notified:
            return None
        self._write(data)
        return self._out.read()

    def keep(self, ciphertext: bytes, sent: int, data: bytes,
             on_handoff: Handoff | None) -> Entry | None:
        """The kernel took ``sent`` bytes of ``seal(data)``'s ``ciphertext``:
        queue the rest, with ``data`` as its plaintext in the output queue
        (started, so it cannot be withdrawn); its handoff runs with the rest."""
        entry = self.output.append(data, on_handoff)
        if entry is not None:
            entry.started = True
        self.keep_sealed(ciphertext, sent, len(data))
        return entry

    def seal_queue(self) -> bytes | None:
        """The whole output queue encrypted now, in one record, for a send at
        once; None if ciphertext waits, or the queue is too big for one record.

        Its entries are marked started.  Once the kernel took all of it, the
        caller consumes the plaintext (``output.consume(size)``: the
        handoffs); if only part, it hands the rest to :meth:`keep_sealed`.
        """
        if self._pieces or not self.handshake_done or self.failed or self._notified:
            return None
        plain = self.output.joined(RECORD_SIZE)
        if plain is None:
            return None
        self._write(plain)
        return self._out.read()

    def keep_sealed(self, ciphertext: bytes, sent: int, plain: int) -> None:
        """The kernel took ``sent`` bytes of ``ciphertext``, made from the
        first ``plain`` bytes of the output queue: the rest waits to be sent."""
        rest = memoryview(ciphertext)[sent:] if sent else ciphertext
        self._pieces.append([rest, plain])
        self.size += len(rest)

    def consume(self, sent: int) -> list[Handoff]:
        """The kernel took ``sent`` bytes of ciphertext: return the handoffs now due."""
        pieces = self._pieces
        if sent == self.size:
            # All of it (the common case): every piece is done.
            self.size = 0
            plain = (pieces[0][1] if len(pieces) == 1
                     else sum(piece[1] for piece in pieces))  # type: ignore[misc]
            pieces.clear()
            return self.output.consume(plain) if plain else []  # type: ignore[arg-type]
        self.size -= sent
        plain = 0
        while sent:
            piece = pieces[0]
            data = piece[0]
            length = len(data)  # type: ignore[arg-type]
            if sent < length:
                piece[0] = memoryview(data)[sent:]  # type: ignore[arg-type]
                break
            sent -= length
            plain += piece[1]  # type: ignore[operator]
            pieces.popleft()
        return self.output.consume(plain) if plain else []

    def close_notify(self) -> bool:
        """Queue our close_notify alert (once, after all output); True if there is one."""
        if not self.handshake_done or self.failed or self._notified:
            return False
        self._notified = True
        try:
            self._ssl.unwrap()
        except ssl.SSLError:
            pass  # wants the peer's close_notify, which we do not wait for
        self._collect()
        return bool(self._pieces)

    def take_all(self) -> bytes:
        """All ciphertext waiting, as one piece of bytes (its handoffs are not run)."""
        data = b"".join(bytes(p[0]) for p in self._pieces)  # type: ignore[arg-type]
        self._pieces.clear()
        self.size = 0
        return data

    def _encrypt_batch(self) -> None:
        output = self.output
        size = output.size
        plain = output.joined(RECORD_SIZE)
        if plain is not None:
            # The common case: all of it, in one record.
            self._encrypt(plain, size)
            return
        # The head of the queue, up to one batch, joined (OpenSSL encrypts
        # from one buffer) and cut into full records: one per RECORD_SIZE
        # bytes, not one per group of entries (a group a little past the
        # maximum would make a full record and a tiny one).
        buffers = output.buffers()
        budget = BATCH_SIZE
        count = 0
        for buffer in buffers:
            budget -= len(buffer)
            count += 1
            if budget <= 0:
                if budget < 0:
                    buffers[count - 1] = memoryview(buffer)[:len(buffer) + budget]
                break
        data = memoryview(b"".join(buffers[:count] if count < len(buffers) else buffers))
        output.mark_started(count)
        for start in range(0, len(data), RECORD_SIZE):
            record = data[start:start + RECORD_SIZE]
            self._encrypt(record, len(record))

    def _encrypt(self, plain: bytes | memoryview, size: int) -> None:
        """One record: ``plain``, the next ``size`` bytes (at most
        RECORD_SIZE) of the output queue's head."""
        self._write(plain)
        data = self._out.read()
        self._pieces.append([data, size])
        self.size += len(data)

    def _collect(self) -> None:
        """Ciphertext the SSL object made by itself (handshake, alerts, tickets)."""
        if self._out.pending:
            data = self._out.read()
            self._pieces.append([data, 0])
            self.size += len(data)
