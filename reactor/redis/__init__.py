"""Redis plumbing shared by the cluster and the accounts, and nothing else.

* :mod:`reactor.redis.url` -- Redis URLs: the checks, redis-py's client,
  URLs fit for a log line;
* :mod:`reactor.redis.resp` -- RESP without sockets: batches of script
  calls and the matching of their replies, reads of a stream;
* :mod:`reactor.redis.keys` -- the prefix of every key the server writes.

It sits below :mod:`reactor.accounts` and :mod:`reactor.cluster`, which use
it and never each other.  Importing :mod:`reactor.redis.url` needs nothing
but the standard library (redis-py is imported when a client is made);
:mod:`reactor.redis.resp` needs hiredis.
"""
