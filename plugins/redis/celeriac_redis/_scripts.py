"""The Lua scripts of the Redis transport.

Each one runs atomically on the server, so a message is never both out of
its queue and unrecorded: it is in a queue list, in the ``unacked`` hash
with a lease, or in a delayed set, and moves between them in one step.

Keys (``global_keyprefix`` applied by the caller):

* ``unacked``: kombu's hash, ``delivery_tag -> [message, exchange, routing_key]``.
  We write ``exchange = ""`` and ``routing_key = <queue>`` so that kombu's own
  restore (a Celery worker's) puts the message back into the right queue.
* ``unacked_lease`` (sorted set): ``delivery_tag -> lease deadline``
  (Unix time). Only our deliveries are in it; kombu's ``unacked_index`` is
  left to Celery workers, whose restore never touches our leased messages.
* ``unacked_deliveries`` (hash): ``delivery_tag -> deliveries so far``.
* ``<queue>\\x06\\x16delayed`` (sorted set): messages due later, scored by
  their due time.

Messages are stored and moved as the exact bytes the publisher wrote; no
script re-encodes one (cjson would turn ``[]`` into ``{}``).
"""

from __future__ import annotations

_TAG = """
-- The delivery tag of a raw message without decoding it: kombu writes it
-- near the end, in the properties (quotes inside strings are escaped, so
-- the plain search cannot match inside a header's text).
local function find_tag(raw)
  local from = #raw - 1024
  if from < 1 then from = 1 end
  for _, needle in ipairs({'"delivery_tag": "', '"delivery_tag":"'}) do
    local s = from
    local last = nil
    while true do
      local i, j = string.find(raw, needle, s, true)
      if not i then break end
      last = j
      s = j + 1
    end
    if not last and from > 1 then
      s = 1
      while true do
        local i, j = string.find(raw, needle, s, true)
        if not i then break end
        last = j
        s = j + 1
      end
    end
    if last then
      local close = string.find(raw, '"', last + 1, true)
      if close and close > last + 1 then return string.sub(raw, last + 1, close - 1) end
    end
  end
  return nil
end
"""

# Shared Lua helpers: the list a message goes to for its priority (kombu's
# steps: 0 -> the queue itself, 3/6/9 -> "<queue><sep><step>"), and putting
# one unacked entry back at the head of its queue.
_COMMON = """
local function list_for(queue, priority, sep, steps)
  local p = tonumber(priority) or 0
  if p < 0 then p = 0 elseif p > 9 then p = 9 end
  local chosen = 0
  for _, step in ipairs(steps) do
    if step <= p then chosen = step end
  end
  if chosen == 0 then return queue end
  return queue .. sep .. chosen
end

local function message_priority(raw)
  local ok, msg = pcall(cjson.decode, raw)
  if ok and type(msg) == 'table' and type(msg['properties']) == 'table' then
    return msg['properties']['priority']
  end
  return 0
end

-- An unacked entry is '[' .. raw .. ',"",' .. cjson.encode(queue) .. ']'
-- (kombu's layout; raw is kept byte for byte, even when it is not JSON).
local function split_entry(entry)
  local raw, queue = string.match(entry, '^%[(.*),"",("[^"]*")%]$')
  if not raw then return nil, nil end
  local ok, name = pcall(cjson.decode, queue)
  if not ok then return nil, nil end
  return raw, name
end

-- The deliveries hash counts deliveries that ended without an ack.
local function requeue(unacked, leases, deliveries, tag, sep, steps, prefix)
  local entry = redis.call('HGET', unacked, tag)
  redis.call('HDEL', unacked, tag)
  redis.call('ZREM', leases, tag)
  if not entry then return 0 end
  local raw, queue = split_entry(entry)
  if not raw or type(queue) ~= 'string' then return 0 end
  redis.call('RPUSH', list_for(prefix .. queue, message_priority(raw), sep, steps), raw)
  redis.call('HINCRBY', deliveries, tag, 1)
  return 1
end

local function parse_steps(text)
  local steps = {}
  for s in string.gmatch(text, '[^,]+') do table.insert(steps, tonumber(s)) end
  return steps
end
"""

FETCH = _TAG + """
-- Apply pending acks, then take up to ARGV[1] messages and lease them.
-- KEYS[1] unacked, KEYS[2] leases, KEYS[3] deliveries,
-- KEYS[4..] the lists to pop from, in order.
-- ARGV[1] how many, ARGV[2] lease deadline, ARGV[3] prefix of made-up tags,
-- ARGV[4] = a, the number of acks, ARGV[5..4+a] their tags,
-- ARGV[5+a] = f, how many of them were redelivered, then f tags,
-- then one queue name per list key.
-- Every write is one command per batch, whatever its size.
local want = tonumber(ARGV[1])
local deadline = ARGV[2]
local a = tonumber(ARGV[4])
local f = tonumber(ARGV[5 + a])
local names = 5 + a + f
if a > 0 then
  local acks = {}
  for i = 1, a do acks[i] = ARGV[4 + i] end
  redis.call('HDEL', KEYS[1], unpack(acks))
  redis.call('ZREM', KEYS[2], unpack(acks))
  if f > 0 then
    local forget = {}
    for i = 1, f do forget[i] = ARGV[5 + a + i] end
    redis.call('HDEL', KEYS[3], unpack(forget))
  end
end
local out, tags, entries, leases = {}, {}, {}, {}
local made = 0
for k = 4, #KEYS do
  if want <= 0 then break end
  local items = redis.call('RPOP', KEYS[k], want)
  if items then
    local queue = cjson.encode(ARGV[names + (k - 3)])
    for _, raw in ipairs(items) do
      -- The tag without decoding the message (the last match: properties
      -- come after the headers; quotes inside strings are escaped).
      local tag = find_tag(raw)
      local entry = '[' .. raw .. ',"",' .. queue .. ']'
      if not tag then
        made = made + 1
        tag = ARGV[3] .. made
      end
      table.insert(tags, tag)
      table.insert(entries, tag)
      table.insert(entries, entry)
      table.insert(leases, deadline)
      table.insert(leases, tag)
      table.insert(out, k - 3)
      table.insert(out, tag)
      table.insert(out, 0)
      table.insert(out, raw)
    end
    want = want - #items
  end
end
if #tags == 0 then return out end
local before = redis.call('HMGET', KEYS[3], unpack(tags))
for i = 1, #tags do
  out[(i - 1) * 4 + 3] = (tonumber(before[i]) or 0) + 1
end
redis.call('HSET', KEYS[1], unpack(entries))
redis.call('ZADD', KEYS[2], unpack(leases))
return out
"""

ACK = """
-- KEYS: unacked, leases, deliveries. ARGV[1] = f, then f redelivered tags
-- (their counts are forgotten too), then the other tags.
local f = tonumber(ARGV[1])
local tags = {}
for i = 2, #ARGV do tags[#tags + 1] = ARGV[i] end
if #tags == 0 then return 0 end
redis.call('HDEL', KEYS[1], unpack(tags))
redis.call('ZREM', KEYS[2], unpack(tags))
if f > 0 then
  local forget = {}
  for i = 1, f do forget[i] = tags[i] end
  redis.call('HDEL', KEYS[3], unpack(forget))
end
return #tags
"""

REQUEUE = _COMMON + """
-- Put leased messages back at the head of their queues.
-- KEYS: unacked, leases, deliveries. ARGV[1] sep, ARGV[2] steps "0,3,6,9",
-- ARGV[3] the global key prefix, ARGV[4..] tags.
local steps = parse_steps(ARGV[2])
local n = 0
for i = 4, #ARGV do
  n = n + requeue(KEYS[1], KEYS[2], KEYS[3], ARGV[i], ARGV[1], steps, ARGV[3])
end
return n
"""

SWEEP = _COMMON + """
-- Requeue messages whose lease ran out (their consumer died).
-- KEYS: unacked, leases, deliveries. ARGV[1] now, ARGV[2] limit, ARGV[3] sep,
-- ARGV[4] steps, ARGV[5] the global key prefix.
local steps = parse_steps(ARGV[4])
local tags = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local n = 0
for _, tag in ipairs(tags) do
  n = n + requeue(KEYS[1], KEYS[2], KEYS[3], tag, ARGV[3], steps, ARGV[5])
end
return n
"""

PARK = _COMMON + """
-- Move leased messages that are not due yet into their queue's delayed set.
-- KEYS: unacked, leases. ARGV[1] sep, ARGV[2] the global key prefix, then
-- (tag, due) pairs. (A parked message keeps its delivery count: parking is
-- not a delivery.)
local n = 0
for i = 3, #ARGV, 2 do
  local tag, due = ARGV[i], ARGV[i + 1]
  local entry = redis.call('HGET', KEYS[1], tag)
  redis.call('HDEL', KEYS[1], tag)
  redis.call('ZREM', KEYS[2], tag)
  if entry then
    local raw, queue = split_entry(entry)
    if raw and type(queue) == 'string' then
      redis.call('ZADD', ARGV[2] .. queue .. ARGV[1] .. 'delayed', due, raw)
      n = n + 1
    end
  end
end
return n
"""

PROMOTE = _COMMON + """
-- Move due messages from a delayed set to the head of their queue, oldest
-- first; return the next due time (or -1 when nothing waits).
-- KEYS[1] the delayed set. ARGV[1] now, ARGV[2] limit, ARGV[3] queue's list
-- (with the global key prefix),
-- ARGV[4] sep, ARGV[5] steps.
local steps = parse_steps(ARGV[5])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for i = #due, 1, -1 do
  local raw = due[i]
  redis.call('RPUSH', list_for(ARGV[3], message_priority(raw), ARGV[4], steps), raw)
  redis.call('ZREM', KEYS[1], raw)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[2] then return nxt[2] end
return '-1'
"""


# -- chords (the result backend) ---------------------------------------------------
# Celery 5.7's chord keys and steps (PROTOCOL.md C.4), so that Celery and
# celeriac workers can share one chord: ``.j`` the recorded parts (a sorted
# set scored by group_index, or a list when ``result_chord_ordered`` is off),
# ``.d`` the "<task_id>:<group_index>" of each recorded part, ``.s`` the size
# the client set, ``.t`` parts added while running (Task.replace), ``.c`` the
# dispatch claim (a token with a TTL), then "done". Keys come with the
# global key prefix applied.

# KEYS: .j .t .s .d .c and the group's own key (a GroupResult Celery saved).
# ARGV: task id, encoded part, ordered ('1'/'0'), group_index ('+inf' when
# none), expiry in ms (0: none), claim TTL in ms, claim token.
# Returns {recorded, added while running, size (-1: not set), added (0/1),
# claimed (0/1)}; {-1, 0, -1, 0, 0} when the chord is finished.
CHORD_RECORD = """
local jkey, tkey, skey, dkey, ckey, gkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local ordered, score, expires = ARGV[3], ARGV[4], tonumber(ARGV[5])
if redis.call('GET', ckey) == 'done' then
  return {-1, 0, -1, 0, 0}
end
local added = 0
if redis.call('SADD', dkey, ARGV[1] .. ':' .. score) == 1 then
  added = 1
  if ordered == '1' then
    redis.call('ZADD', jkey, score, ARGV[2])
  else
    redis.call('RPUSH', jkey, ARGV[2])
  end
end
local count
if ordered == '1' then
  count = redis.call('ZCARD', jkey)
else
  count = redis.call('LLEN', jkey)
end
if expires > 0 then
  for _, key in ipairs({jkey, tkey, skey, dkey, gkey}) do
    redis.call('PEXPIRE', key, expires)
  end
end
local diff = tonumber(redis.call('GET', tkey) or '0') or 0
local size = tonumber(redis.call('GET', skey) or '-1') or -1
local claimed = 0
if size >= 0 and count == size + diff then
  if redis.call('SET', ckey, ARGV[7], 'NX', 'PX', ARGV[6]) then
    claimed = 1
  end
end
return {count, diff, size, added, claimed}
"""

# KEYS: .c .s .j .t. ARGV: token, claim TTL in ms, ordered ('1'/'0').
# Returns 1 (the token holds the claim now), 0 (another token holds a live
# claim) or 2 (nothing to send: finished, no size, or parts missing).
CHORD_CLAIM = """
local ckey, skey, jkey, tkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local current = redis.call('GET', ckey)
if current == ARGV[1] then
  redis.call('PEXPIRE', ckey, ARGV[2])
  return 1
end
if current == 'done' then return 2 end
if current then return 0 end
local size = tonumber(redis.call('GET', skey) or '')
if not size then return 2 end
local count
if ARGV[3] == '1' then
  count = redis.call('ZCARD', jkey)
else
  count = redis.call('LLEN', jkey)
end
if count ~= size + (tonumber(redis.call('GET', tkey) or '0') or 0) then return 2 end
redis.call('SET', ckey, ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: .c .j .t .s .d. ARGV: token, TTL of the "done" mark in ms (0: none).
# Drops the chord's records and marks it done, if the token still holds the
# claim (1); else changes nothing (0).
CHORD_FINISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], 'done')
end
return 1
"""
