-- Record the outcome of one execution. The loop pipelines one call per finished job.
-- KEYS: 1 queue, 2 delayed, 3 active, 4 events, 5 stats hash, 6 dead-letter zset, 7 idempotency key (or 'rt:none')
-- ARGV: 1 id, 2 owner (worker id; '' = arq's own loop owns the job keys), 3 outcome
--       (complete|retry|defer|requeue|dead), 4 now_ms, 5 events_maxlen, 6 queue, 7 function, 8 attempt,
--       9 result record (arq format), 10 result_ttl_ms, 11 delay_ms (retry/defer/requeue), 12 priority, 13 error, 14 dead-letter entry,
--       15 dead-letter max, 16 idempotency ttl s, 17 idempotency result, 18 idempotency lock token
-- Returns 1, or 0 when this worker no longer owns the job (its lease was lost and the job was taken again).
local id, owner, outcome = ARGV[1], ARGV[2], ARGV[3]
-- @include now_fn.lua
local now, maxlen = server_now(), tonumber(ARGV[5])
local info = 'rt:info:' .. id
local BAND = 100000000000
local arq_owned = owner == ''

if not arq_owned then
  local holder = redis.call('GET', 'arq:in-progress:' .. id)
  if holder and holder ~= owner then return 0 end
  if not holder and not redis.call('ZSCORE', KEYS[3], id) then return 0 end
  redis.call('DEL', 'arq:in-progress:' .. id)
  redis.call('ZREM', KEYS[3], id)
end

local ik = KEYS[7]
if ik ~= 'rt:none' then
  local lock = ik .. ':lock'
  if redis.call('GET', lock) == ARGV[18] then redis.call('DEL', lock) end
end

local function event(kind, extra_k, extra_v)
  if maxlen > 0 then
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', maxlen, '*', 'type', kind, 'job_id', id, 'function', ARGV[7],
      'queue', ARGV[6], 'attempt', ARGV[8], extra_k, extra_v)
  end
end

if outcome == 'complete' or outcome == 'dead' then
  local ttl = tonumber(ARGV[10])
  if not arq_owned then
    redis.call('SET', 'arq:result:' .. id, ARGV[9], 'PX', ttl)
    redis.call('DEL', 'arq:job:' .. id)
  end
  redis.call('HSET', info, 's', outcome, 'ft', math.floor(now))
  if outcome == 'complete' then
    redis.call('HDEL', info, 'e')
    if ik ~= 'rt:none' then
      redis.call('HSET', ik, 'j', id, 's', 'done', 'r', ARGV[17])
      redis.call('EXPIRE', ik, tonumber(ARGV[16]))
    end
    event('completed', 'ms', now)
    redis.call('HINCRBY', KEYS[5], 'completed', 1)
  else
    redis.call('HSET', info, 'e', ARGV[13])
    if ik ~= 'rt:none' and redis.call('HGET', ik, 's') ~= 'done' then redis.call('DEL', ik) end
    redis.call('SET', 'rt:dlq:' .. id, ARGV[14])
    redis.call('ZADD', KEYS[6], now, id)
    local over = redis.call('ZCARD', KEYS[6]) - tonumber(ARGV[15])
    if over > 0 then
      local old = redis.call('ZRANGE', KEYS[6], 0, over - 1)
      for _, oid in ipairs(old) do redis.call('DEL', 'rt:dlq:' .. oid) end
      redis.call('ZREMRANGEBYRANK', KEYS[6], 0, over - 1)
    end
    event('dead', 'error', ARGV[13])
    redis.call('HINCRBY', KEYS[5], 'dead', 1)
  end
  redis.call('PEXPIRE', info, ttl)
  return 1
end

-- retry / defer / requeue: back to the queue at run_at, keeping the priority band
local run_at, prio = now + tonumber(ARGV[11]), tonumber(ARGV[12])
if outcome ~= 'retry' then redis.call('HINCRBY', info, 'a', -1) end
if ARGV[13] ~= '' then redis.call('HSET', info, 'e', ARGV[13]) end
if not arq_owned then
  if prio > 0 and run_at > now then
    redis.call('ZADD', KEYS[2], math.floor(run_at) * 16 + prio, id)
  else
    redis.call('ZADD', KEYS[1], run_at - prio * BAND, id)
  end
end
if outcome == 'retry' then
  event('retrying', 'run_at', math.floor(run_at))
  redis.call('HINCRBY', KEYS[5], 'retried', 1)
else
  event(outcome == 'defer' and 'deferred' or 'requeued', 'run_at', math.floor(run_at))
end
return 1
