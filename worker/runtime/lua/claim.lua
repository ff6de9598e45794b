-- Claim up to N due jobs of one queue for one worker, in one round trip.
-- Promotes due priority-deferred jobs, applies the queue-wide rate limit (GCRA), moves claimed ids from the
-- queue zset to the active zset with a lease, sets arq's in-progress key (so arq's Job.status() still works),
-- counts the attempt and emits 'started' events.
-- KEYS: 1 queue, 2 delayed, 3 active, 4 events, 5 rate-limit key, 6 paused set, 7 wake list, 8 stats hash
-- ARGV: 1 (unused), 2 n, 3 lease_ms, 4 worker_id, 5 events_maxlen, 6 rate per second (0 = unlimited), 7 burst,
--       8 queue name
-- Returns: {retry_after_ms, ms_until_next_due_or_-1, id1, payload1, attempt1, prio1, id2, ...}
-- @include now_fn.lua
local now = server_now()
local n = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local maxlen = tonumber(ARGV[5])
local rate, burst = tonumber(ARGV[6]), tonumber(ARGV[7])
-- @include promote_fn.lua

local function next_due()
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local best = -1
  if #first > 0 then best = tonumber(first[2]) end
  local d = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if #d > 0 then
    local at = math.floor(tonumber(d[2]) / 16)
    if best < 0 or at < best then best = at end
  end
  if best < 0 then return -1 end
  return math.max(best - now, 0)
end

if redis.call('SISMEMBER', KEYS[6], ARGV[8]) == 1 then
  return {0, -1}
end

promote(KEYS[1], KEYS[2], now)

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, n)
local count = #due / 2
if count == 0 then
  return {0, next_due()}
end

local retry_after = 0
if rate > 0 then
  -- GCRA: each job costs `interval` ms of the theoretical arrival time; `burst` jobs may run back to back.
  local interval = 1000 / rate
  local tat = tonumber(redis.call('GET', KEYS[5]) or now)
  if tat < now then tat = now end
  local allowed = math.floor((now + burst * interval - tat) / interval)
  if allowed < 0 then allowed = 0 end
  if allowed < count then
    count = allowed
    redis.call('HINCRBY', KEYS[8], 'rate_limited', 1)  -- a claim held back by the queue's rate limit
  end
  if count == 0 then
    return {math.ceil(tat + interval - burst * interval - now), -1}
  end
  tat = tat + count * interval
  redis.call('SET', KEYS[5], tat, 'PX', math.ceil(tat - now) + 1000)
end

local out = {retry_after, -1}
local claimed, active_args, job_keys = {}, {}, {}
for i = 1, count * 2, 2 do
  local id = due[i]
  local score = tonumber(due[i + 1])
  -- SET NX: an id whose in-progress key exists is being run by arq's own loop (compat mode): not ours
  if redis.call('SET', 'arq:in-progress:' .. id, ARGV[4], 'NX', 'PX', lease) then
    local prio = 0
    if score < now - BAND / 2 then prio = math.floor((now - score) / BAND + 0.5) end
    claimed[#claimed + 1] = id
    active_args[#active_args + 1] = math.floor(now + lease) * 16 + prio
    active_args[#active_args + 1] = id
    job_keys[#job_keys + 1] = 'arq:job:' .. id
    local attempt = redis.call('HINCRBY', 'rt:info:' .. id, 'a', 1)
    if maxlen > 0 then
      redis.call('XADD', KEYS[4], 'MAXLEN', '~', maxlen, '*', 'type', 'started', 'job_id', id, 'queue', ARGV[8],
        'attempt', attempt)
    end
    out[#out + 1] = id
    out[#out + 1] = false
    out[#out + 1] = attempt
    out[#out + 1] = prio
  end
end
if #claimed > 0 then
  redis.call('ZREM', KEYS[1], unpack(claimed))
  redis.call('ZADD', KEYS[3], unpack(active_args))
  local payloads = redis.call('MGET', unpack(job_keys))
  for i = 1, #claimed do
    out[2 + (i - 1) * 4 + 2] = payloads[i]
  end
end
if count == n then
  -- a full batch: more may be due, wake another worker
  redis.call('LPUSH', KEYS[7], 1)
  redis.call('LTRIM', KEYS[7], 0, 0)
end
return out
