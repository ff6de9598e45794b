-- Enqueue N jobs of one function (arq-compatible data model plus our extras); each job is created atomically.
-- KEYS: 1 events stream, 2 wake list, 3 queue zset, 4 delayed zset, 5 (grouped queues only) the group ring
-- ARGV: 1 events_maxlen (0 = no events), 2 function, 3 queue name, 4 expires_ms, 5 idem_ttl_s,
--       6 run_at_ms (-1 = now + delay), 7 delay_ms, 8 priority, 9 idempotency key ('' = none),
--       10 caller ids (1 when the caller chose the ids: check they are not taken),
--       11.. job_id1, record1, job_id2, record2, ... (with KEYS[5]: job_id1, record1, group1, ...; see group_fn.lua)
-- Jobs enqueued in the same millisecond keep FIFO order: scores carry the server's microseconds.
-- Returns a flat list: job_id, created (1) / duplicate (0) per job.
-- @include now_fn.lua
-- @include group_fn.lua
local now = server_now()
local maxlen = tonumber(ARGV[1])
local fn, queue = ARGV[2], ARGV[3]
local expires = tonumber(ARGV[4])
local idem_ttl = tonumber(ARGV[5])
local base_at, delay, prio, ik = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local check_ids = ARGV[10] == '1'
local BAND = 100000000000
local out = {}
local added = 0
local seq = 0
local queued = {}  -- score, id pairs: one variadic ZADD at the end
local grouped = KEYS[5] ~= nil
local step = grouped and 3 or 2
local gqueued, gfirst = {}, {}  -- per group: score, id pairs; earliest run time
for i = 11, #ARGV, step do
  local id, record = ARGV[i], ARGV[i + 1]
  local run_at = base_at
  if run_at < 0 then run_at = now + delay + seq * 0.001 end
  seq = seq + 1
  local existing = false
  if ik ~= '' then
    local owner = redis.call('HGET', ik, 'j')
    if owner then
      out[#out + 1] = owner; out[#out + 1] = 0; existing = true
    end
  end
  if not existing and check_ids and redis.call('EXISTS', 'arq:job:' .. id, 'arq:result:' .. id) > 0 then
    out[#out + 1] = id; out[#out + 1] = 0; existing = true
  end
  if not existing then
    redis.call('SET', 'arq:job:' .. id, record, 'PX', math.ceil(expires + math.max(run_at - now, 0)))
    if prio > 0 and run_at > now then
      redis.call('ZADD', KEYS[4], math.floor(run_at) * 16 + prio, id)
    elseif grouped then
      local g = ARGV[i + 2]
      local list = gqueued[g]
      if not list then
        list = {}
        gqueued[g] = list
        gfirst[g] = run_at
      end
      list[#list + 1] = run_at - prio * BAND
      list[#list + 1] = id
      if run_at < gfirst[g] then gfirst[g] = run_at end
    else
      queued[#queued + 1] = run_at - prio * BAND
      queued[#queued + 1] = id
    end
    if ik ~= '' then
      redis.call('HSET', ik, 'j', id, 's', 'queued')
      redis.call('EXPIRE', ik, idem_ttl)
    end
    if maxlen > 0 then
      redis.call('XADD', KEYS[1], '*', 'type', 'enqueued', 'job_id', id,
        'function', fn, 'queue', queue, 'run_at', math.floor(run_at))
    end
    out[#out + 1] = id; out[#out + 1] = 1
    added = added + 1
  end
end
if #queued > 0 then
  redis.call('ZADD', KEYS[3], unpack(queued))
end
if grouped then
  local G = gkeys(queue, KEYS[3])
  for g, list in pairs(gqueued) do
    redis.call('ZADD', gzset(G, g), unpack(list))
    gready(G, g, math.max(gfirst[g], now))
  end
end
if added > 0 then
  if maxlen > 0 then redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', maxlen) end  -- once, not per XADD
  redis.call('LPUSH', KEYS[2], 1)
  redis.call('LTRIM', KEYS[2], 0, 0)
end
return out
