-- @include promote_fn.lua

-- Lease one due job to `owner` (shared by claim and the grouped claim): SET NX arq's in-progress key (an id
-- whose key exists is being run by arq's own loop in compat mode: not ours), count the attempt, issue its fencing
-- token (see finish.lua), emit 'started' and append {id, payload placeholder, attempt, prio, fence} to `out`.
-- Returns true when leased.
local function lease_job(k, acc, out, id, score, now, lease, owner, maxlen, qname)
  if not redis.call('SET', 'arq:in-progress:' .. id, owner, 'NX', 'PX', lease) then return false end
  local prio = 0
  if score < now - BAND / 2 then prio = math.floor((now - score) / BAND + 0.5) end
  acc.claimed[#acc.claimed + 1] = id
  acc.active_args[#acc.active_args + 1] = math.floor(now + lease) * 16 + prio
  acc.active_args[#acc.active_args + 1] = id
  acc.job_keys[#acc.job_keys + 1] = 'arq:job:' .. id
  local attempt = redis.call('HINCRBY', 'rt:info:' .. id, 'a', 1)
  local fence = redis.call('HINCRBY', 'rt:info:' .. id, 'f', 1)
  if maxlen > 0 then
    redis.call('XADD', k.events, '*', 'type', 'started', 'job_id', id, 'queue', qname, 'attempt', attempt)
  end
  out[#out + 1] = id
  out[#out + 1] = false
  out[#out + 1] = attempt
  out[#out + 1] = prio
  out[#out + 1] = fence
  return true
end

-- After a claim's lease_job calls: move the leased ids to the active zset and fill in their payloads.
local function leased(k, acc, out, maxlen)
  local claimed = acc.claimed
  if #claimed == 0 then return end
  if maxlen > 0 then redis.call('XTRIM', k.events, 'MAXLEN', '~', maxlen) end  -- once, not per XADD
  redis.call('ZADD', k.active, unpack(acc.active_args))
  local payloads = redis.call('MGET', unpack(acc.job_keys))
  for i = 1, #claimed do
    out[2 + (i - 1) * 5 + 2] = payloads[i]
  end
end

-- Claim up to n due jobs of one queue for one worker (shared by claim.lua and finish.lua).
-- Promotes due priority-deferred jobs, applies the queue-wide rate limit (GCRA), moves claimed ids from the
-- queue zset to the active zset with a lease, sets arq's in-progress key (so arq's Job.status() still works),
-- counts the attempt and emits 'started' events.
-- k: {queue, delayed, active, events, rl, paused, wake, stats}
-- Returns {retry_after_ms, ms_until_next_due_or_-1, id1, payload1, attempt1, prio1, fence1, id2, ...}
local function claim(k, now, n, lease, owner, maxlen, rate, burst, qname)
  local function next_due()
    local first = redis.call('ZRANGE', k.queue, 0, 0, 'WITHSCORES')
    local best = -1
    if #first > 0 then best = tonumber(first[2]) end
    local d = redis.call('ZRANGE', k.delayed, 0, 0, 'WITHSCORES')
    if #d > 0 then
      local at = math.floor(tonumber(d[2]) / 16)
      if best < 0 or at < best then best = at end
    end
    if best < 0 then return -1 end
    return math.max(best - now, 0)
  end

  if redis.call('SISMEMBER', k.paused, qname) == 1 then
    return {0, -1}
  end

  promote(k.queue, k.delayed, now)

  local due = redis.call('ZRANGEBYSCORE', k.queue, '-inf', now, 'WITHSCORES', 'LIMIT', 0, n)
  local count = #due / 2
  if count == 0 then
    return {0, next_due()}
  end

  local retry_after = 0
  if rate > 0 then
    -- GCRA: each job costs `interval` ms of the theoretical arrival time; `burst` jobs may run back to back.
    local interval = 1000 / rate
    local tat = tonumber(redis.call('GET', k.rl) or now)
    if tat < now then tat = now end
    local allowed = math.floor((now + burst * interval - tat) / interval)
    if allowed < 0 then allowed = 0 end
    if allowed < count then
      count = allowed
      redis.call('HINCRBY', k.stats, 'rate_limited', 1)  -- a claim held back by the queue's rate limit
    end
    if count == 0 then
      return {math.ceil(tat + interval - burst * interval - now), -1}
    end
    tat = tat + count * interval
    redis.call('SET', k.rl, tat, 'PX', math.ceil(tat - now) + 1000)
  end

  local out = {retry_after, -1}
  local acc = {claimed = {}, active_args = {}, job_keys = {}}
  for i = 1, count * 2, 2 do
    lease_job(k, acc, out, due[i], tonumber(due[i + 1]), now, lease, owner, maxlen, qname)
  end
  if #acc.claimed > 0 then redis.call('ZREM', k.queue, unpack(acc.claimed)) end
  leased(k, acc, out, maxlen)
  if count == n then
    -- a full batch: more may be due, wake another worker
    redis.call('LPUSH', k.wake, 1)
    redis.call('LTRIM', k.wake, 0, 0)
  end
  return out
end
