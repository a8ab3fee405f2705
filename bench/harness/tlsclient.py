"""The harness's side of TLS: one client context for the sender, probes and receivers.

The server's certificate is a throwaway one made for the run
(``bench.systems.make_certificate``) and is not verified: verifying it would
add the harness's cost, not the server's, and the server's work is the same
either way.  TLS 1.2 at least, the ``ssl`` module's default ciphers, the
same as the server's context (``reactor.tls.load_context``): on this OpenSSL
they agree on TLS 1.3 with AES-GCM.  The C receiver sets up the same
(``creceiver.c``, ``-DWITH_TLS``).
"""

from __future__ import annotations

import functools
import ssl


@functools.cache
def client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
