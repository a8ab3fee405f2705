"""The admin endpoint (``--admin-port``): metrics and health over HTTP.

:mod:`reactor.admin.http` reads a request head and writes a response, with
no I/O; :mod:`reactor.admin.endpoint` answers ``/metrics``, ``/healthz`` and
``/readyz`` for the connections a backend hands it; the chat's metrics are
in :mod:`reactor.admin.chat_metrics`.  Built by :mod:`reactor.app`.
"""
