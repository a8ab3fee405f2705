"""One chat across many server processes and hosts, through Redis.

Every server started with ``--cluster redis://HOST:PORT`` joins the same
chat: names are unique across all of them, presence notices, direct messages
and broadcasts cross between them, and a server that dies takes its users
offline everywhere within a few seconds.  :mod:`reactor.cluster.whiteboard`
is the cluster's roster (:class:`~reactor.contracts.Roster`: the chat logic
is the same as on one server), built in layers, one module per job:
:mod:`~reactor.cluster.board` (what a node knows, its calls to Redis),
:mod:`~reactor.cluster.direct` (direct messages across nodes),
:mod:`~reactor.cluster.inbox` (the node's inbox, mirrored) and
:mod:`~reactor.cluster.lease` (registration, the lease, fencing);
:mod:`reactor.cluster.scripts` is the state in
Redis and the scripts that change it (spoken through
:mod:`reactor.redis.resp`), :mod:`reactor.cluster.loop_link` and
:mod:`reactor.cluster.link` the connection to Redis (in the backend's event
loop, or on two threads of its own), and :mod:`reactor.cluster.workers` runs
``--workers N`` processes on one port.
"""
