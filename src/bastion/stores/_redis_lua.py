"""The Lua scripts behind the Redis store: every decision runs inside one script, atomically.

Redis runs a script as one step -- no other command interleaves -- which is
what makes "check every limit, then record the call" or "check every cap,
then hold the amount on all of them" safe across any number of clients
without a lock. The rate-limit script takes a *list* of decisions and makes
them one after the other, so the store can send every decision that piled up
during one round trip in the next single call (see
:mod:`bastion.stores._coalesce`); each decision stays atomic, and a batch of
one is the plain case. Each script is the same rule as the Python code the other
backends share (:mod:`bastion.stores._window_log`,
:mod:`bastion.stores._fixed_window`, :mod:`bastion.stores._budget_store`),
rewritten once in Lua; the conformance suite holds both to the same results.

Conventions: numbers go in and out as strings formatted with ``%.17g`` (Lua
would otherwise print 14 digits and Redis would truncate replies to integers),
and a rate-limit reply is one compact string rather than an array, which is
cheaper for the client to parse;
times come back as absolute deadlines and Python turns them into waits, so
the float rounding rule lives in one place. An empty ``now`` argument means
"use the server's ``TIME``": every client then shares the server's clock.
"""

from __future__ import annotations

__all__ = [
    "APPROVAL_CREATE",
    "APPROVAL_DECIDE",
    "APPROVAL_FIELDS",
    "APPROVAL_GET",
    "APPROVAL_LIST",
    "BUDGET_COMMITTED",
    "BUDGET_RELEASE",
    "BUDGET_RESERVE",
    "BUDGET_SETTLE",
    "CHECKPOINT_LOAD",
    "CHECKPOINT_SAVE",
    "IDEMPOTENCY_CLAIM",
    "IDEMPOTENCY_RELEASE",
    "IDEMPOTENCY_STORE",
    "RATE_LIMIT",
    "SESSION_APPEND",
    "SESSION_CREATE",
    "SESSION_DELETE",
    "SESSION_LIST",
    "SESSION_LOAD",
]

RATE_LIMIT = """
-- Decides one or more rate-limit calls, each atomically (the script runs as one step).
-- ARGV[1]: now ('' = the server's TIME); then per decision: algorithm ('s' sliding log, 'f' fixed
-- window), n (number of limits), window, cost1..costN, limit1..limitN.
-- KEYS per decision: sliding: the log zset (score: expires_at; member: seq:cost1:...:costN) and a
-- state hash (seq, s<i> running sums, l<i> newest weighted expiry); fixed: one hash (w: window
-- number, s<i>: sums in it).
-- Reply: one string, decisions separated by ';', each 'allowed binding limit remaining
-- retry_deadline reset_deadline now' (deadlines absolute; the caller turns them into waits).
local function fmt(x) return string.format('%.17g', x) end
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
local nowf = fmt(now)
local fields = {}
local function field_names(n, with_last)
  local key = n .. (with_last and 'l' or 'f')
  if fields[key] then return fields[key] end
  local names = {}
  if with_last then
    names[1] = 'seq'
    for i = 1, n do names[1 + i] = 's' .. i; names[1 + n + i] = 'l' .. i end
  else
    names[1] = 'w'
    for i = 1, n do names[1 + i] = 's' .. i end
  end
  fields[key] = names
  return names
end
local function binding_of(n, sums, limits)
  local binding, share = 1, 2
  if n > 1 then
    for i = 1, n do
      local free = (limits[i] - sums[i]) / limits[i]
      if free < share then binding, share = i, free end
    end
  end
  return binding
end
local function cost_of(member, i)
  local j = 0
  for part in string.gmatch(member, '[^:]+') do
    if j == i then return tonumber(part) end
    j = j + 1
  end
  return 0
end

local function sliding(log, state, n, window, costs, limits)
  local stored = redis.call('HMGET', state, unpack(field_names(n, true)))
  local seq = tonumber(stored[1]) or 0
  local sums, last = {}, {}
  for i = 1, n do
    sums[i] = tonumber(stored[1 + i]) or 0
    last[i] = tonumber(stored[1 + n + i]) or 0
  end
  local gone = redis.call('ZRANGEBYSCORE', log, '-inf', nowf)
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', log, '-inf', nowf)
    if redis.call('EXISTS', log) == 0 then
      for i = 1, n do sums[i] = 0; last[i] = 0 end  -- an empty log restarts from exact zeros
    else
      for _, member in ipairs(gone) do
        for i = 1, n do sums[i] = sums[i] - cost_of(member, i) end
      end
    end
  end
  local binding, wait_until = 0, -1
  for i = 1, n do
    local excess = sums[i] + costs[i] - limits[i]
    if excess > 0 then
      -- walk the oldest entries, a few at a time, until enough weight on limit i would leave
      local freed, at, start = 0, last[i], 0
      while true do
        local chunk = redis.call('ZRANGE', log, start, start + 7, 'WITHSCORES')
        if #chunk == 0 then break end
        local found = false
        for e = 1, #chunk, 2 do
          freed = freed + cost_of(chunk[e], i)
          if freed >= excess then at = tonumber(chunk[e + 1]); found = true; break end
        end
        if found then break end
        start = start + 8
      end
      if at > wait_until then binding, wait_until = i, at end
    end
  end
  if binding > 0 then
    if #gone > 0 then
      local out = {}
      for i = 1, n do
        out[#out + 1] = 's' .. i; out[#out + 1] = fmt(sums[i])
        out[#out + 1] = 'l' .. i; out[#out + 1] = fmt(last[i])
      end
      redis.call('HSET', state, unpack(out))
    end
    local left = math.max(limits[binding] - sums[binding], 0)
    return '0 ' .. (binding - 1) .. ' ' .. fmt(limits[binding]) .. ' ' .. fmt(left) .. ' ' ..
      fmt(wait_until) .. ' ' .. fmt(last[binding]) .. ' ' .. nowf
  end
  local weighted = false
  for i = 1, n do if costs[i] > 0 then weighted = true end end
  if weighted or #gone > 0 then
    local out = {}
    if weighted then
      local expires = now + window
      seq = seq + 1
      local member = tostring(seq)
      for i = 1, n do
        member = member .. ':' .. fmt(costs[i])
        if costs[i] > 0 then sums[i] = sums[i] + costs[i]; last[i] = expires end
      end
      redis.call('ZADD', log, fmt(expires), member)
      out[1] = 'seq'; out[2] = tostring(seq)
    end
    for i = 1, n do
      out[#out + 1] = 's' .. i; out[#out + 1] = fmt(sums[i])
      out[#out + 1] = 'l' .. i; out[#out + 1] = fmt(last[i])
    end
    redis.call('HSET', state, unpack(out))
    if weighted then
      local ttl = math.ceil(window * 1000) + 1000
      redis.call('PEXPIRE', log, ttl)
      redis.call('PEXPIRE', state, ttl)
    end
  end
  local binding = binding_of(n, sums, limits)
  local left = math.max(limits[binding] - sums[binding], 0)
  return '1 ' .. (binding - 1) .. ' ' .. fmt(limits[binding]) .. ' ' .. fmt(left) .. ' ' ..
    nowf .. ' ' .. fmt(last[binding]) .. ' ' .. nowf
end

local function fixed(key, n, window, costs, limits)
  local index = math.floor(now / window)
  if (index + 1) * window <= now then index = index + 1
  elseif index * window > now then index = index - 1 end
  local ends = (index + 1) * window
  local stored = redis.call('HMGET', key, unpack(field_names(n, false)))
  local fresh = tonumber(stored[1]) ~= index
  local sums = {}
  for i = 1, n do
    if fresh then sums[i] = 0 else sums[i] = tonumber(stored[1 + i]) or 0 end
  end
  for i = 1, n do
    if sums[i] + costs[i] > limits[i] then
      return '0 ' .. (i - 1) .. ' ' .. fmt(limits[i]) .. ' ' .. fmt(limits[i] - sums[i]) .. ' ' ..
        fmt(ends) .. ' ' .. fmt(ends) .. ' ' .. nowf
    end
  end
  local out = {'w', fmt(index)}
  for i = 1, n do
    sums[i] = sums[i] + costs[i]
    out[#out + 1] = 's' .. i; out[#out + 1] = fmt(sums[i])
  end
  redis.call('HSET', key, unpack(out))
  if fresh then redis.call('PEXPIRE', key, math.ceil((ends - now) * 1000) + 1000) end
  local binding = binding_of(n, sums, limits)
  local reset = 0
  if sums[binding] > 0 then reset = ends end
  local left = math.max(limits[binding] - sums[binding], 0)
  return '1 ' .. (binding - 1) .. ' ' .. fmt(limits[binding]) .. ' ' .. fmt(left) .. ' ' ..
    nowf .. ' ' .. fmt(reset) .. ' ' .. nowf
end

local replies, a, k = {}, 2, 1
while a <= #ARGV do
  local algorithm, n, window = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local costs, limits = {}, {}
  for i = 1, n do
    costs[i] = tonumber(ARGV[a + 2 + i])
    limits[i] = tonumber(ARGV[a + 2 + n + i])
  end
  a = a + 3 + 2 * n
  if algorithm == 's' then
    replies[#replies + 1] = sliding(KEYS[k], KEYS[k + 1], n, window, costs, limits)
    k = k + 2
  else
    replies[#replies + 1] = fixed(KEYS[k], n, window, costs, limits)
    k = k + 1
  end
end
return table.concat(replies, ';')
"""

_BUDGET_PRELUDE = """
-- Each cap has two keys: KEYS[2c-1] a hash (settled, reserved, h:<reservation> = held amount)
-- and KEYS[2c] a zset of its holds (member: reservation, score: hold_until).
local function reclaim(cap, holds, now)
  local gone = redis.call('ZRANGEBYSCORE', holds, '-inf', now)
  for _, r in ipairs(gone) do
    local amount = tonumber(redis.call('HGET', cap, 'h:' .. r))
    if amount then
      redis.call('HINCRBY', cap, 'reserved', string.format('%d', -amount))
      redis.call('HDEL', cap, 'h:' .. r)
    end
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', holds, '-inf', now) end
end
local function drop_hold(cap, holds, r)
  -- true when the hold was there to drop
  local amount = tonumber(redis.call('HGET', cap, 'h:' .. r))
  if amount then
    redis.call('HINCRBY', cap, 'reserved', string.format('%d', -amount))
    redis.call('HDEL', cap, 'h:' .. r)
    redis.call('ZREM', holds, r)
    return true
  end
  return false
end
local function committed(cap)
  local v = redis.call('HMGET', cap, 'settled', 'reserved')
  return (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0)
end
local function keep_until(cap, holds, at, now)
  -- Relative to the caller's clock (which may not be the server's), and only ever
  -- extended: another reservation's hold may need the keys for longer.
  local ms = string.format('%d', math.max(math.ceil((tonumber(at) - tonumber(now)) * 1000), 1))
  for _, key in ipairs({cap, holds}) do
    redis.call('PEXPIRE', key, ms, 'NX')
    redis.call('PEXPIRE', key, ms, 'GT')
  end
end
"""

BUDGET_RESERVE = (
    _BUDGET_PRELUDE
    + """
-- ARGV: reservation, amount, mode, now, hold_until, then per cap: limit, keep_until
local r, amount, mode, now, hold_until = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local n = #KEYS / 2
local reply = {0, -1}
local over, room = -1, amount
for c = 1, n do
  local cap, holds = KEYS[2 * c - 1], KEYS[2 * c]
  reclaim(cap, holds, now)
  drop_hold(cap, holds, r)  -- a retried reserve replaces its own hold, never adds a second
  local spent = committed(cap)
  reply[2 + c] = spent
  local free = tonumber(ARGV[4 + 2 * c]) - spent
  if free < room then over, room = c, free end
end
local granted = amount
if over ~= -1 and mode ~= 'force' then
  if mode == 'partial' and room > 0 then granted = room else granted = 0 end
end
if granted > 0 then
  for c = 1, n do
    local cap, holds = KEYS[2 * c - 1], KEYS[2 * c]
    redis.call('HSET', cap, 'h:' .. r, string.format('%d', granted))
    redis.call('HINCRBY', cap, 'reserved', string.format('%d', granted))
    redis.call('ZADD', holds, hold_until, r)
    keep_until(cap, holds, ARGV[5 + 2 * c], now)
  end
end
reply[1] = granted
if over == -1 then reply[2] = -1 else reply[2] = over - 1 end
return reply
"""
)

BUDGET_SETTLE = (
    _BUDGET_PRELUDE
    + """
-- ARGV: reservation, amount, now, if_held ('1': add only where the hold is still there, so a
-- settle sent twice counts once), then per cap: keep_until. Returns 1 when anything was added.
local r, amount, now, if_held = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local added = 0
for c = 1, #KEYS / 2 do
  local cap, holds = KEYS[2 * c - 1], KEYS[2 * c]
  if drop_hold(cap, holds, r) or not if_held then
    redis.call('HINCRBY', cap, 'settled', amount)
    added = 1
  end
  keep_until(cap, holds, ARGV[4 + c], now)
end
return added
"""
)

BUDGET_RELEASE = (
    _BUDGET_PRELUDE
    + """
-- ARGV: reservation
for c = 1, #KEYS / 2 do
  drop_hold(KEYS[2 * c - 1], KEYS[2 * c], ARGV[1])
end
return 1
"""
)

BUDGET_COMMITTED = (
    _BUDGET_PRELUDE
    + """
-- ARGV: now
local reply = {}
for c = 1, #KEYS / 2 do
  reclaim(KEYS[2 * c - 1], KEYS[2 * c], ARGV[1])
  reply[c] = committed(KEYS[2 * c - 1])
end
return reply
"""
)

_IDEMPOTENCY_NOW = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
"""

IDEMPOTENCY_CLAIM = (
    _IDEMPOTENCY_NOW
    + """
-- KEYS[1]: the key's hash (fp, token, until, and once done: status, headers, body).
-- ARGV: now ('' = the server's TIME), fingerprint, token, lock_ttl (seconds).
-- Reply: {'acquired', fp} | {'running', fp} | {'done', fp, status, headers, body}.
local r = redis.call('HMGET', KEYS[1], 'fp', 'until', 'status', 'headers', 'body')
if r[1] and tonumber(r[2]) > now then
  if r[3] then return {'done', r[1], r[3], r[4], r[5]} end
  return {'running', r[1]}
end
local lock_ttl = tonumber(ARGV[4])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'fp', ARGV[2], 'token', ARGV[3], 'until',
  string.format('%.17g', now + lock_ttl))
redis.call('PEXPIRE', KEYS[1], string.format('%d', math.ceil(lock_ttl * 1000)))
return {'acquired', ARGV[2]}
"""
)

IDEMPOTENCY_STORE = (
    _IDEMPOTENCY_NOW
    + """
-- KEYS[1]: the key's hash. ARGV: now, token, ttl (seconds), status, headers, body, channel.
-- Reply: 1 when the token still owned the running record and the response was stored (then the
-- key is published on the channel, to wake duplicates waiting for it).
local r = redis.call('HMGET', KEYS[1], 'token', 'status')
if r[1] ~= ARGV[2] or r[2] then return 0 end
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'until', string.format('%.17g', now + ttl),
  'status', ARGV[4], 'headers', ARGV[5], 'body', ARGV[6])
redis.call('PEXPIRE', KEYS[1], string.format('%d', math.ceil(ttl * 1000)))
redis.call('PUBLISH', ARGV[7], KEYS[1])
return 1
"""
)

IDEMPOTENCY_RELEASE = """
-- KEYS[1]: the key's hash. ARGV: token, channel. Deletes the running record the token owns and
-- publishes the key, so a duplicate waiting for it takes it over at once.
local r = redis.call('HMGET', KEYS[1], 'token', 'status')
if r[1] == ARGV[1] and not r[2] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], KEYS[1])
end
return 1
"""

CHECKPOINT_SAVE = (
    _IDEMPOTENCY_NOW
    + """
-- KEYS[1]: the run's hash (step, state, at, until ('' = never)).
-- ARGV: now ('' = the server's TIME), step, state, ttl (seconds; '' = never).
-- Reply: 1 when saved; 0 when a live checkpoint has a higher step (a save never rolls back).
local r = redis.call('HMGET', KEYS[1], 'step', 'until')
if r[1] and (r[2] == '' or tonumber(r[2]) > now) and tonumber(r[1]) > tonumber(ARGV[2]) then
  return 0
end
local expires = ''
if ARGV[4] ~= '' then expires = string.format('%.17g', now + tonumber(ARGV[4])) end
redis.call('HSET', KEYS[1], 'step', ARGV[2], 'state', ARGV[3],
  'at', string.format('%.17g', now), 'until', expires)
if ARGV[4] == '' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], string.format('%d', math.ceil(tonumber(ARGV[4]) * 1000)))
end
return 1
"""
)

CHECKPOINT_LOAD = (
    _IDEMPOTENCY_NOW
    + """
-- KEYS[1]: the run's hash. ARGV: now ('' = the server's TIME).
-- Reply: {step, state, saved_at} of a live checkpoint, or an empty list.
local r = redis.call('HMGET', KEYS[1], 'step', 'state', 'at', 'until')
if not r[1] or (r[4] ~= '' and tonumber(r[4]) <= now) then return {} end
return {r[1], r[2], r[3]}
"""
)

_SESSION_EXPIRE = """
-- Keeps the scope's session index at least as long as its longest-lived session.
local function keep_index(index, ms)
  local left = redis.call('PTTL', index)
  if left >= 0 and left < ms then redis.call('PEXPIRE', index, ms) end
  if left == -1 then redis.call('PEXPIRE', index, ms) end
end
"""

SESSION_CREATE = (
    _IDEMPOTENCY_NOW
    + _SESSION_EXPIRE
    + """
-- KEYS: the session's hash (meta, at, until, ttl), its message list, the scope's index zset.
-- ARGV: now ('' = the server's TIME), ttl (seconds), metadata, session id.
-- Starts the session afresh (an old one's messages go); the hash expires after ttl.
local ms = math.ceil(tonumber(ARGV[2]) * 1000)
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'meta', ARGV[3], 'at', string.format('%.17g', now),
  'until', string.format('%.17g', now + tonumber(ARGV[2])), 'ttl', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ms)
redis.call('ZADD', KEYS[3], 0, ARGV[4])
keep_index(KEYS[3], ms)
return 1
"""
)

SESSION_APPEND = (
    _IDEMPOTENCY_NOW
    + _SESSION_EXPIRE
    + """
-- KEYS: the session's hash, its message list, the scope's index. ARGV: now, message1..N.
-- Reply: the new number of messages, or -1 when the session is missing or expired. Both keys
-- get the same fresh expiry, so the list never outlives (or dies before) its hash.
local r = redis.call('HMGET', KEYS[1], 'until', 'ttl')
if not r[1] or tonumber(r[1]) <= now then return -1 end
local ttl = tonumber(r[2])
local length = redis.call('LLEN', KEYS[2])
if #ARGV > 1 then length = redis.call('RPUSH', KEYS[2], unpack(ARGV, 2)) end
local ms = math.ceil(ttl * 1000)
redis.call('HSET', KEYS[1], 'until', string.format('%.17g', now + ttl))
redis.call('PEXPIRE', KEYS[1], ms)
if length > 0 then redis.call('PEXPIRE', KEYS[2], ms) end
keep_index(KEYS[3], ms)
return length
"""
)

SESSION_LOAD = (
    _IDEMPOTENCY_NOW
    + """
-- KEYS: the session's hash, its message list. ARGV: now.
-- Reply: {metadata, created_at, expires_at, {messages...}} of a live session, or an empty list.
local r = redis.call('HMGET', KEYS[1], 'meta', 'at', 'until')
if not r[1] or tonumber(r[3]) <= now then return {} end
return {r[1], r[2], r[3], redis.call('LRANGE', KEYS[2], 0, -1)}
"""
)

SESSION_LIST = (
    _IDEMPOTENCY_NOW
    + """
-- KEYS: the scope's index zset (members: session ids, all scored 0, so ordered by id).
-- ARGV: now, cursor ('' = from the start), count wanted, the hash key prefix of the scope.
-- Reply: up to count live ids after the cursor. Ids whose hash Redis has expired leave the index.
local start = '-'
if ARGV[2] ~= '' then start = '(' .. ARGV[2] end
local want = tonumber(ARGV[3])
local found = {}
while #found < want do
  local ids = redis.call('ZRANGEBYLEX', KEYS[1], start, '+', 'LIMIT', 0, 100)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    local expires = redis.call('HGET', ARGV[4] .. id, 'until')
    if not expires then
      redis.call('ZREM', KEYS[1], id)
    elseif tonumber(expires) > now and #found < want then
      found[#found + 1] = id
    end
  end
  start = '(' .. ids[#ids]
end
return found
"""
)

SESSION_DELETE = """
-- KEYS: the session's hash, its message list, the scope's index. ARGV: session id.
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""

APPROVAL_FIELDS = (
    "run",
    "agent",
    "tool",
    "args",
    "hash",
    "risk",
    "desc",
    "session",
    "status",
    "at",
    "until",
    "dat",
    "by",
    "reason",
)
"""The fields of an approval's hash, in the order every approval script returns them."""

_APPROVAL_PRELUDE = (
    _IDEMPOTENCY_NOW
    + _SESSION_EXPIRE
    + """
local function fmt(x) return string.format('%.17g', x) end
local FIELDS = {"""
    + ", ".join(f"'{name}'" for name in APPROVAL_FIELDS)
    + """}
local function read(key) return redis.call('HMGET', key, unpack(FIELDS)) end
-- A record past its purge time counts as absent (Redis also expires the key itself).
local function live(key)
  local purge = redis.call('HGET', key, 'purge')
  return purge and tonumber(purge) > now
end
"""
)

APPROVAL_CREATE = (
    _APPROVAL_PRELUDE
    + """
-- KEYS: the approval's hash, the scope's index zset. ARGV: now, ttl, keep_for, id, run, agent,
-- tool, args, hash, risk, description, session ('' = none).
-- Reply: {1 if created else 0, now, {fields}}: an existing live approval is returned unchanged.
if live(KEYS[1]) then return {0, fmt(now), read(KEYS[1])} end
local ttl, keep = tonumber(ARGV[2]), tonumber(ARGV[3])
local ms = math.ceil((ttl + keep) * 1000)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'run', ARGV[5], 'agent', ARGV[6], 'tool', ARGV[7], 'args', ARGV[8],
  'hash', ARGV[9], 'risk', ARGV[10], 'desc', ARGV[11], 'session', ARGV[12], 'status', 'pending',
  'at', fmt(now), 'until', fmt(now + ttl), 'purge', fmt(now + ttl + keep), 'dat', '', 'by', '',
  'reason', '')
redis.call('PEXPIRE', KEYS[1], ms)
redis.call('ZADD', KEYS[2], 0, ARGV[4])
keep_index(KEYS[2], ms)
return {1, fmt(now), read(KEYS[1])}
"""
)

APPROVAL_GET = (
    _APPROVAL_PRELUDE
    + """
-- KEYS: the approval's hash. ARGV: now. Reply: {now, {fields}}, or {} when absent or purged.
if not live(KEYS[1]) then return {} end
return {fmt(now), read(KEYS[1])}
"""
)

APPROVAL_DECIDE = (
    _APPROVAL_PRELUDE
    + """
-- KEYS: the approval's hash. ARGV: now, status ('approved' / 'rejected'), by, reason, channel,
-- message. Records the decision only while the approval is pending and before its deadline,
-- and then publishes the message, in the same atomic step.
-- Reply: {1 if this decision was recorded else 0, now, {fields}}, or {} when absent or purged.
if not live(KEYS[1]) then return {} end
local r = redis.call('HMGET', KEYS[1], 'status', 'until')
if r[1] ~= 'pending' or tonumber(r[2]) <= now then return {0, fmt(now), read(KEYS[1])} end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'dat', fmt(now), 'by', ARGV[3], 'reason', ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {1, fmt(now), read(KEYS[1])}
"""
)

APPROVAL_LIST = (
    _APPROVAL_PRELUDE
    + """
-- KEYS: the scope's index zset (members: approval ids, all scored 0, so ordered by id).
-- ARGV: now, cursor ('' = from the start), count wanted, the hash key prefix of the scope,
-- status wanted ('' = any). Reply: {now, id1, {fields1}, id2, {fields2}, ...}. Ids whose hash
-- has gone leave the index.
local start = '-'
if ARGV[2] ~= '' then start = '(' .. ARGV[2] end
local want, wanted = tonumber(ARGV[3]), ARGV[5]
local reply = {fmt(now)}
local found = 0
while found < want do
  local ids = redis.call('ZRANGEBYLEX', KEYS[1], start, '+', 'LIMIT', 0, 100)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    local key = ARGV[4] .. id
    if redis.call('EXISTS', key) == 0 then
      redis.call('ZREM', KEYS[1], id)
    elseif found < want and live(key) then
      local r = redis.call('HMGET', key, 'status', 'until')
      local status = r[1]
      if status == 'pending' and tonumber(r[2]) <= now then status = 'expired' end
      if wanted == '' or status == wanted then
        found = found + 1
        reply[#reply + 1] = id
        reply[#reply + 1] = read(key)
      end
    end
  end
  start = '(' .. ids[#ids]
end
return reply
"""
)
