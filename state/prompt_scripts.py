"""Lua scripts behind fair prompt claiming (``WorkQueue``); each runs atomically in Valkey/Redis.

Keys they share (see ``state.queue``):
- ``po:run:{id}:prompts`` (group ``rollout``): a run's queued prompts.
- ``po:prompts:runs`` ZSET run id -> turn: the runs whose prompt stream holds messages. The lowest score is
  served next; a run that was served gets the next turn (``po:prompts:turn``, INCR), a run that joins gets
  ``turn - 0.5``: ahead of the run served last, behind every run waiting longer (``ZADD LT``, so a run
  already waiting keeps its place).
- ``po:prompts:delayed`` ZSET ``"<nonce> <PromptTask JSON>"`` -> due time (unix seconds): prompts waiting
  for a retry after a transient reward failure, or deferred while their endpoint is saturated.
- ``po:prompts``: the single stream of older deployments, drained into the per-run streams.

- ``po:run:{id}`` field ``ahead``: how many of the run's groups may wait for its trainer, queued or still
  being scored (``RunStore.create_run``). ``CLAIM`` passes over a run that has that many, moving it to the
  back: its rollouts would go stale before the trainer reached them, and the rollout workers' time goes to
  runs that need groups. Runs without the field (older records) are not limited.

A run leaves the index only inside ``CLAIM`` and only when its stream is empty, and every write that adds
a prompt also (re)adds its run in the same atomic step, so a run with queued prompts is never missing.
"""

from __future__ import annotations

# Adds run ARGV[1] to the index at ``turn - 0.5`` unless it already waits with a lower score.
# KEYS: index, turn counter.
JOIN_INDEX = """
local turn = tonumber(redis.call('GET', KEYS[2]) or '0')
redis.call('ZADD', KEYS[1], 'LT', turn - 0.5, ARGV[1])
return 1
"""

# Claims up to ARGV[3] new prompts of the first run, in index order, that has any and is not too far
# ahead of its trainer; returns {run_id, entries} or false. Runs whose streams are empty leave the index;
# runs with only claimed (pending) prompts, or too far ahead, go to the back. KEYS: index, turn counter.
# ARGV: group, consumer, count, runs to scan.
CLAIM = """
local index, turnkey = KEYS[1], KEYS[2]
local group, consumer, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local runs = redis.call('ZRANGE', index, 0, tonumber(ARGV[4]) - 1)
for _, run in ipairs(runs) do
  local stream = 'po:run:' .. run .. ':prompts'
  local reply = false
  local room = count
  local ahead = tonumber(redis.call('HGET', 'po:run:' .. run, 'ahead') or '')
  if ahead and redis.call('EXISTS', stream) == 1 then
    local waiting = redis.call('XLEN', 'po:run:' .. run .. ':groups')
    local scoring = redis.pcall('XPENDING', stream, group)
    if type(scoring) == 'table' and not scoring.err then waiting = waiting + tonumber(scoring[1]) end
    room = math.min(count, ahead - waiting)
  end
  if room > 0 and redis.call('EXISTS', stream) == 1 then
    reply = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', room, 'STREAMS', stream, '>')
    if type(reply) == 'table' and reply.err then
      redis.call('XGROUP', 'CREATE', stream, group, '0')
      reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', room, 'STREAMS', stream, '>')
    end
  end
  local turn = redis.call('INCR', turnkey)
  if reply and reply[1] and #reply[1][2] > 0 then
    redis.call('ZADD', index, 'XX', turn, run)
    return {run, reply[1][2]}
  end
  if redis.call('XLEN', stream) == 0 then
    redis.call('ZREM', index, run)
  else
    redis.call('ZADD', index, 'XX', turn, run)
  end
end
return false
"""

_ADD_TO_RUN = """
local function add_to_run(index, turnkey, group, data)
  local ok, task = pcall(cjson.decode, data)
  if not ok or type(task) ~= 'table' or type(task['run_id']) ~= 'string' then
    return false
  end
  local run = task['run_id']
  local stream = 'po:run:' .. run .. ':prompts'
  pcall(redis.call, 'XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
  redis.call('XADD', stream, '*', 'data', data)
  local turn = tonumber(redis.call('GET', turnkey) or '0')
  redis.call('ZADD', index, 'LT', turn - 0.5, run)
  return true
end
"""

# Moves delayed prompts whose due time (score) is <= ARGV[1] back into their runs' streams, at most
# ARGV[2] of them; returns how many. KEYS: delayed, index, turn counter. ARGV: now, limit, group.
MOVE_DUE = (
    _ADD_TO_RUN
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local sep = string.find(member, ' ', 1, true)
  if sep then
    add_to_run(KEYS[2], KEYS[3], ARGV[3], string.sub(member, sep + 1))
  end
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""
)

# Moves prompts of the legacy single stream into their runs' streams: new ones, and pending ones idle
# for ARGV[4] ms (a worker of the older deployment died holding them); at most ARGV[3] of each.
# Returns how many. KEYS: legacy stream, index, turn counter. ARGV: group, consumer, count, min idle ms.
MIGRATE_LEGACY = (
    _ADD_TO_RUN
    + """
local legacy, group, consumer, count = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', legacy) == 0 then
  return 0
end
local entries = {}
local fresh = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', legacy, '>')
if fresh and fresh[1] then
  for _, entry in ipairs(fresh[1][2]) do table.insert(entries, entry) end
end
local idle = redis.call('XAUTOCLAIM', legacy, group, consumer, ARGV[4], '0-0', 'COUNT', count)
for _, entry in ipairs(idle[2]) do
  if entry and entry[2] then table.insert(entries, entry) end
end
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'data' then add_to_run(KEYS[2], KEYS[3], group, fields[i + 1]) end
  end
  redis.call('XACK', legacy, group, entry[1])
  redis.call('XDEL', legacy, entry[1])
end
return #entries
"""
)
