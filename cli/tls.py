"""TLS for the client: a verifying context, and a TLS stream for the piped mode.

By default the server's certificate is verified, and its host name, against
the system's CAs or ``--ca FILE``.  ``--insecure`` turns both off and says
loudly what that means.

The piped mode reads in one thread and sends from another.  OpenSSL forbids
using one SSL object from two threads at once, and an ``SSLSocket`` held by a
reader blocked in ``recv`` would hold up every send; so :class:`TLSStream`
runs TLS over memory buffers (``ssl.MemoryBIO``), with a short lock around
each SSL call only: the reader blocks in the plain socket's ``recv`` holding
nothing, and the sender in ``sendall`` holding only the send lock, which keeps
the records in order.
"""

from __future__ import annotations

import socket
import ssl
import threading

INSECURE_WARNING = (
    "reactor-chat: WARNING: --insecure: the server's certificate is NOT verified. "
    "Anyone on the network path can pose as the server, and read and change "
    "everything you send and receive."
)


class CAFileError(Exception):
    """The ``--ca`` file cannot be used; ``str`` says why."""


def client_context(ca_file: str | None = None, insecure: bool = False) -> ssl.SSLContext:
    """A context for connecting to the server: verifying unless ``insecure``."""
    if insecure:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        try:
            context = ssl.create_default_context(cafile=ca_file)
        except FileNotFoundError as error:
            raise CAFileError(f"cannot read the CA file {ca_file}: {error.strerror}") from None
        except (OSError, ssl.SSLError):
            raise CAFileError(f"{ca_file}: no PEM certificate in it") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def handshake_error(error: BaseException) -> str | None:
    """The reason to give for a failed TLS handshake, or None if it is no TLS error."""
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = (error.verify_message or "").rstrip(".")
        if detail[1:2].islower():  # "Hostname mismatch", not "IP address mismatch"
            detail = detail[:1].lower() + detail[1:]
        return f"certificate verify failed: {detail}" if detail else "certificate verify failed"
    if isinstance(error, ssl.SSLError):
        reason = (error.reason or str(error)).lower().replace("_", " ")
        if error.reason == "WRONG_VERSION_NUMBER":
            reason += " (is that the server's TLS port?)"
        return f"TLS handshake failed: {reason}"
    return None


class TLSStream:
    """The client's side of TLS over a connected blocking socket, socket-like:
    ``recv``, ``sendall``, ``settimeout``, ``setsockopt``, ``shutdown``,
    ``close``.  One thread may read while another sends."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, host: str) -> None:
        self._sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_hostname=host)
        self._ssl_lock = threading.Lock()  # around every call on the SSL object
        self._send_lock = threading.Lock()  # taking ciphertext out and sending it, in order

    def handshake(self) -> None:
        """Complete the handshake (raises ssl.SSLError, TimeoutError, OSError)."""
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._send_pending()
                data = self._sock.recv(65536)
                if data:
                    self._in.write(data)
                else:
                    self._in.write_eof()
        self._send_pending()

    def version(self) -> str | None:
        return self._ssl.version()

    def recv(self, size: int) -> bytes:
        while True:
            with self._ssl_lock:
                try:
                    data: bytes | None = self._ssl.read(size)
                except ssl.SSLWantReadError:
                    data = None
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    data = b""
                owed = self._out.pending
            if owed:
                self._send_pending()
            if data is not None:
                return data
            raw = self._sock.recv(65536)
            with self._ssl_lock:
                if raw:
                    self._in.write(raw)
                else:
                    self._in.write_eof()

    def sendall(self, data: bytes) -> None:
        with self._send_lock:
            with self._ssl_lock:
                self._ssl.write(data)
                ciphertext = self._out.read()
            self._sock.sendall(ciphertext)

    def _send_pending(self) -> None:
        with self._send_lock:
            with self._ssl_lock:
                ciphertext = self._out.read()
            if ciphertext:
                self._sock.sendall(ciphertext)

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def setsockopt(self, *args: int) -> None:
        self._sock.setsockopt(*args)

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        self._sock.close()
