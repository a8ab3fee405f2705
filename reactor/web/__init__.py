"""The browser client: a chat page and a WebSocket endpoint beside the TCP port.

* :mod:`reactor.web.http` (standard library only): the bounded HTTP request
  head, the static page with its security headers, the origin rule.
* :mod:`reactor.web.wire` (needs the ``websockets`` package, the ``[web]``
  extra): :class:`~reactor.web.wire.WebWire`, one connection's HTTP and
  WebSocket layer, sans-IO, with the same ``receive``/``buffers``/``consume``
  shape as :class:`reactor.tls.TLSWire`, so that a backend plugs it in where
  it plugs TLS in, once, not once per feature.
* ``static/``: the page itself (``index.html``, ``app.js``, ``style.css``),
  shipped inside the package: no CDN, no build step.

One chat line is one WebSocket text message, both ways: the chat, its
commands, escaping, limits and flood control are those of TCP.

This module imports nothing outside the standard library, so that the
single-node server starts without the extra; :func:`require_websockets`
turns its absence into one line for the operator.
"""

from __future__ import annotations

import importlib.util


class WebSetupError(Exception):
    """The web endpoint cannot be served as asked, in one line."""


def require_websockets() -> None:
    """Raise :class:`WebSetupError` unless the ``websockets`` package is importable."""
    if importlib.util.find_spec("websockets") is None:
        raise WebSetupError("--web-port needs the websockets package: "
                            "pip install 'reactor-chat[web]'")
