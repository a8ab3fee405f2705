"""The cluster's state in Redis, and the Lua scripts that change it.

Every change to shared state is one script, so that Redis runs it whole and
alone: a name claim either wins or sees the winner, a node's death removes all
of its users and announces them in one step.  Every key shares the hash tag
``{chat}``, so that the same scripts run on Redis Cluster (one slot).

Keys (``P`` is the prefix, ``{chat}:`` by default):

``P epoch``           a random value set by the first node of a fresh Redis:
                      a node that finds another (or none) knows Redis lost
                      its data, and registers its users again.
``P nodes``           ZSET node id -> its last lease renewal (Redis time, ms),
                      moved later by any gap in Redis's service.
``P served``          Redis's time at the last renewal or registration: a
                      gap since then is a gap in Redis's service.
``P users``           HASH name key (casefolded) -> ``node \\n display name``,
                      and the field ``""`` (no name's key), so that the hash
                      exists while the epoch does, users or none.
``P node:<id>``       SET of the name keys that node holds.
``P seen``            HASH name key -> display name, of names that were online
                      and are not now ("offline" vs "does not exist"),
``P seen:order``      ZSET of the same keys by when they left, to forget the
                      oldest beyond a bound.
``P inbox:<id>``      STREAM: everything other nodes send that node, in one
                      order, capped at MAXLEN ~ (a node that falls that far
                      behind sees a gap in ``n`` and reloads the state).
``P seq``             HASH node id -> the last ``n`` written to its inbox.

Inbox entries (field ``t``): ``hello`` (written by a node's own
registration: where its reading starts), ``on`` (``node``, ``name``),
``off`` (``node``, ``names`` joined by newlines), ``dead`` (the same, for a
node that stopped renewing its lease), ``bc`` (``data``: a formatted
broadcast line), ``dm`` (``from``, ``seq``, ``to``, ``data``), ``ack``
(``seq``, ``ok``, ``reason``).

Each script takes ``KEYS[1]`` = the prefix and ``ARGV[1..5]`` = node id,
epoch, deadline (Redis ms; 0 = none), inbox MAXLEN, names remembered; then
its own arguments.  A script with a deadline that Redis runs after it (a
command that was stuck while Redis was paused, and that its sender has
already reported as failed) changes nothing and answers ``EXPIRED``.
"""

from __future__ import annotations

from reactor.redis.keys import PREFIX
from reactor.redis.resp import Scripts

__all__ = ["CLUSTER_SCRIPTS", "PREFIX", "SCRIPTS", "SHAS"]

# Shared by every script.  Lua's unpack() is limited to a few thousand
# values, so long lists go in chunks.
_PRELUDE = r"""
local P = KEYS[1]
local node, epoch, deadline = ARGV[1], ARGV[2], tonumber(ARGV[3])
local maxlen, maxseen = ARGV[4], tonumber(ARGV[5])
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function post(target, ...)
  local n = redis.call('HINCRBY', P .. 'seq', target, 1)
  return redis.call('XADD', P .. 'inbox:' .. target, 'MAXLEN', '~', maxlen, '*', 'n', n, ...)
end
local function other_nodes(me)
  local result = {}
  for _, other in ipairs(redis.call('ZRANGE', P .. 'nodes', 0, -1)) do
    if other ~= me then table.insert(result, other) end
  end
  return result
end
local function owner(entry) return string.match(entry, '^([^\n]*)\n') end
local function display(entry) return string.match(entry, '\n(.*)$') end
-- Redis lost part of the chat's state: a key evicted alone (an evicting
-- maxmemory-policy), or deleted.  The users hash always holds its marker and
-- the lease set its caller (a node is only reaped by a member, so an empty
-- set is no reaping).  Then the epoch goes too: every node registers again,
-- as after a FLUSHALL, rather than trusting what is left.
local function state_lost()
  if redis.call('EXISTS', P .. 'users') == 1 and redis.call('EXISTS', P .. 'nodes') == 1 then
    return false
  end
  redis.call('DEL', P .. 'epoch')
  return true
end
-- Why this node may not act now, or nil.
local function refused()
  if redis.call('GET', P .. 'epoch') ~= epoch then return 'EPOCH' end
  if state_lost() then return 'EPOCH' end
  if not redis.call('ZSCORE', P .. 'nodes', node) then return 'FENCED' end
  if deadline > 0 and now_ms() > deadline then return 'EXPIRED' end
  return nil
end
local function remember(key, name)
  redis.call('HSET', P .. 'seen', key, name)
  redis.call('ZADD', P .. 'seen:order', now_ms(), key)
  local extra = redis.call('ZCARD', P .. 'seen:order') - maxseen
  while extra > 0 do
    local oldest = redis.call('ZRANGE', P .. 'seen:order', 0, math.min(extra, 1000) - 1)
    redis.call('ZREM', P .. 'seen:order', unpack(oldest))
    redis.call('HDEL', P .. 'seen', unpack(oldest))
    extra = extra - #oldest
  end
end
-- Take a name offline (if holder still holds it); returns its display name.
local function drop(key, holder)
  local entry = redis.call('HGET', P .. 'users', key)
  redis.call('SREM', P .. 'node:' .. holder, key)
  if not entry or owner(entry) ~= holder then return nil end
  redis.call('HDEL', P .. 'users', key)
  local name = display(entry)
  remember(key, name)
  return name
end
-- Tell every node but `except` that names left; a 'dead' is sent even with
-- no names, since it also tells them to give up on the dead node.
local function announce(kind, holder, names, except)
  if #names == 0 and kind ~= 'dead' then return end
  for _, other in ipairs(other_nodes(except)) do
    if #names == 0 then post(other, 't', kind, 'node', holder, 'names', '') end
    for first = 1, #names, 1000 do
      local chunk = {}
      for i = first, math.min(first + 999, #names) do table.insert(chunk, names[i]) end
      post(other, 't', kind, 'node', holder, 'names', table.concat(chunk, '\n'))
    end
  end
end
-- Remove a node and every name it holds; returns those names.
local function forget_node(gone)
  local names = {}
  for _, key in ipairs(redis.call('SMEMBERS', P .. 'node:' .. gone)) do
    local name = drop(key, gone)
    if name then table.insert(names, name) end
  end
  redis.call('ZREM', P .. 'nodes', gone)
  redis.call('DEL', P .. 'node:' .. gone, P .. 'inbox:' .. gone)
  redis.call('HDEL', P .. 'seq', gone)
  return names
end
-- Leases count only the time Redis was serving.  Renewals reach Redis from
-- every node many times a lease; a longer silence (Redis paused, stopped or
-- starved) gave no node a chance to renew, so every lease is extended by it,
-- and the first renewals after it cannot reap nodes that have not yet had
-- theirs.  Returns Redis's time now.
local function bridge_gap(lease)
  local now = now_ms()
  local last = tonumber(redis.call('GET', P .. 'served') or now)
  local gap = now - last
  if gap > lease / 2 then
    local scores = redis.call('ZRANGE', P .. 'nodes', 0, -1, 'WITHSCORES')
    for i = 1, #scores, 2 do
      redis.call('ZADD', P .. 'nodes', tonumber(scores[i + 1]) + gap, scores[i])
    end
  end
  redis.call('SET', P .. 'served', now)
  return now
end
local function take(key, name)
  redis.call('HSET', P .. 'users', key, node .. '\n' .. name)
  redis.call('SADD', P .. 'node:' .. node, key)
  redis.call('HDEL', P .. 'seen', key)
  redis.call('ZREM', P .. 'seen:order', key)
  for _, other in ipairs(other_nodes(node)) do
    post(other, 't', 'on', 'node', node, 'name', name)
  end
end
"""

# Join (or join again: ARGV[6] = '1') the chat with the users this node has
# now.  ARGV[7] = the lease (ms), ARGV[8] = K, then K keys of names whose
# claims are in flight, then key, name pairs of this node's users.  ARGV[2]
# is the epoch this node knows (empty at first); a fresh Redis gets a new
# one.  Names held
# elsewhere meanwhile come back as conflicts; names Redis has for this node
# that it no longer has are released.  Returns the epoch, the id of the hello
# entry where this node's reading of its inbox starts, the users and the
# remembered names, the conflicts, the hello entry's number, and Redis's time.
REGISTER = _PRELUDE + r"""
if redis.call('EXISTS', P .. 'epoch') == 1 then state_lost() end
local current = redis.call('GET', P .. 'epoch')
if not current then  -- a fresh Redis (or one that lost its data): a new epoch
  current = now_ms() .. ':' .. node
  redis.call('SET', P .. 'epoch', current)
  -- Every other node registers its users again within a lease (its next
  -- renewal answers EPOCH); until then a claim could take a name that one
  -- of them holds, so claims wait.
  if epoch ~= '' then redis.call('SET', P .. 'recovering', '1', 'PX', ARGV[7]) end
  redis.call('HSET', P .. 'users', '', '')
end
-- A node joining again (after an outage) that was reaped meanwhile must not
-- bring back users already announced offline.
if ARGV[6] == '1' and current == epoch and not redis.call('ZSCORE', P .. 'nodes', node) then
  return {'FENCED'}
end
redis.call('ZADD', P .. 'nodes', bridge_gap(tonumber(ARGV[7])), node)
local wanted, conflicts = {}, {}
-- Names with a claim in flight on this node: neither taken nor given up here.
local keep = tonumber(ARGV[8])
for i = 9, 8 + keep do wanted[ARGV[i]] = true end
for i = 9 + keep, #ARGV, 2 do
  local key, name = ARGV[i], ARGV[i + 1]
  wanted[key] = true
  local entry = redis.call('HGET', P .. 'users', key)
  if not entry then
    take(key, name)
  elseif owner(entry) ~= node then
    table.insert(conflicts, name)
  end
end
local gone = {}
for _, key in ipairs(redis.call('SMEMBERS', P .. 'node:' .. node)) do
  if not wanted[key] then
    local name = drop(key, node)
    if name then table.insert(gone, name) end
  end
end
announce('off', node, gone, node)
local hello = post(node, 't', 'hello')
return {current, hello, redis.call('HGETALL', P .. 'users'),
        redis.call('HGETALL', P .. 'seen'), conflicts,
        tonumber(redis.call('HGET', P .. 'seq', node)), now_ms()}
"""

# Renew this node's lease (ARGV[6] = lease ms) and reap the nodes whose lease
# ran out.  Time Redis was not serving does not count (``bridge_gap``); and
# "ran out" is judged against this node's *previous* renewal, not against
# now, which also covers a pause shorter than the gap that is bridged.
RENEW = _PRELUDE + r"""
if redis.call('GET', P .. 'epoch') ~= epoch or state_lost() then return {'EPOCH'} end
if not redis.call('ZSCORE', P .. 'nodes', node) then return {'FENCED'} end
local lease = tonumber(ARGV[6])
local now = bridge_gap(lease)
local previous = redis.call('ZSCORE', P .. 'nodes', node)
redis.call('ZADD', P .. 'nodes', now, node)
local dead = redis.call('ZRANGEBYSCORE', P .. 'nodes', '-inf', '(' .. (tonumber(previous) - lease))
for _, gone in ipairs(dead) do
  if gone ~= node then
    local names = forget_node(gone)
    announce('dead', gone, names, gone)  -- this node too: it reaped, it must hear it
  end
end
return {'OK', now, #dead}
"""

# Claim ARGV[6] (key) as ARGV[7] (display name) for this node.  Answers OK
# with this node's inbox sequence number at that moment, or TAKEN with the
# holder's spelling.
CLAIM = _PRELUDE + r"""
local why = refused()
if why then return {why} end
if redis.call('EXISTS', P .. 'recovering') == 1 then return {'RECOVERING'} end
local entry = redis.call('HGET', P .. 'users', ARGV[6])
if entry then return {'TAKEN', display(entry)} end
take(ARGV[6], ARGV[7])
-- The last entry written to this node's inbox: the node applies everything
-- up to it before it answers the login, so that the new user sees exactly
-- the presence changes that came after it.
return {'OK', tonumber(redis.call('HGET', P .. 'seq', node) or '0')}
"""

# Release ARGV[6] (key) if this node holds it.  No deadline: a late release
# of a name this node holds is still right.
RELEASE = _PRELUDE + r"""
if redis.call('GET', P .. 'epoch') ~= epoch then return {'EPOCH'} end
local name = drop(ARGV[6], node)
if name then announce('off', node, {name}, node) end
return {'OK'}
"""

# A direct message to ARGV[6] (recipient key); ARGV[7] = this node's
# sequence number for the answer, ARGV[8] = the line.  Routed to whichever
# node holds the recipient now.  (The sender is this node's: a node that was
# fenced is refused above, and one that lost a name to a conflict has closed
# that user's connection.)
DIRECT = _PRELUDE + r"""
local why = refused()
if why then return {why} end
local entry = redis.call('HGET', P .. 'users', ARGV[6])
-- While the nodes register their users again, a missing name may be one
-- not yet registered: no answer yet, rather than "left".
if not entry and redis.call('EXISTS', P .. 'recovering') == 1 then return {'RECOVERING'} end
if not entry then return {'OFFLINE'} end
local target = owner(entry)
if target == node then return {'LOCAL'} end
post(target, 't', 'dm', 'from', node, 'seq', ARGV[7], 'to', ARGV[6], 'data', ARGV[8])
return {'OK', target}
"""

# The answer to a direct message: ARGV[6] = its sender's node, ARGV[7] = seq,
# ARGV[8] = '1' or '0', ARGV[9] = the reason if not delivered.
ANSWER = _PRELUDE + r"""
if redis.call('ZSCORE', P .. 'nodes', ARGV[6]) then
  post(ARGV[6], 't', 'ack', 'seq', ARGV[7], 'ok', ARGV[8], 'reason', ARGV[9])
end
return {'OK'}
"""

# A broadcast line, ARGV[6]: one entry per other node, which fans it out to
# its own users.
BROADCAST = _PRELUDE + r"""
local why = refused()
if why then return {why} end
local others = other_nodes(node)
for _, other in ipairs(others) do post(other, 't', 'bc', 'data', ARGV[6]) end
return {'OK', #others}
"""

# A clean shutdown: release every name this node holds (announced to the
# others at once, rather than after the lease) and leave.
LEAVE = _PRELUDE + r"""
if redis.call('GET', P .. 'epoch') ~= epoch then return {'EPOCH'} end
announce('off', node, forget_node(node), node)
return {'OK'}
"""

SCRIPTS: dict[str, str] = {
    "register": REGISTER,
    "renew": RENEW,
    "claim": CLAIM,
    "release": RELEASE,
    "direct": DIRECT,
    "answer": ANSWER,
    "broadcast": BROADCAST,
    "leave": LEAVE,
}

CLUSTER_SCRIPTS = Scripts(SCRIPTS, PREFIX)
SHAS = CLUSTER_SCRIPTS.shas
