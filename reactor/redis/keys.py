"""The prefix of every key the server writes in Redis.

One hash tag (``{chat}``): every key lands in the same slot of a Redis
Cluster, so that one script may touch them all, and an operator can tell the
chat's keys from others in a shared Redis.
"""

PREFIX = "{chat}:"
