"""One chat across many server processes and hosts, through Redis.

Every server started with ``--cluster redis://HOST:PORT`` joins the same
chat: names are unique across all of them, presence notices, direct messages
and broadcasts cross between them, and a server that dies takes its users
offline everywhere within a few seconds.  :mod:`reactor.cluster.whiteboard`
is the cluster's roster (:class:`~reactor.contracts.Roster`: the chat logic
is the same as on one server), :mod:`reactor.cluster.scripts` the state in
Redis and the scripts that change it (spoken through
:mod:`reactor.redis.resp`), :mod:`reactor.cluster.loop_link` and
:mod:`reactor.cluster.link` the connection to Redis (in the backend's event
loop, or on two threads of its own), and :mod:`reactor.cluster.workers` runs
``--workers N`` processes on one port.
"""
