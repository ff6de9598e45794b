-- Record the outcomes of a batch of executions of one queue in one call.
-- With claim_n > 0 it then claims up to claim_n new jobs for the freed slots in the same call (no extra
-- round trip per batch at steady state, like BullMQ's moveToFinished returning the next job).
-- KEYS: 1 queue, 2 delayed, 3 active, 4 events, 5 stats hash, 6 dead-letter zset, 7 rate-limit key, 8 paused set,
--       9 wake list
-- ARGV: 1 owner (worker id; '' = arq's own loop owns the job keys), 2 events_maxlen, 3 queue, 4 dead-letter max,
--       5 idempotency ttl s, 7 claim_n, 8 lease_ms, 9 rate per second, 10 burst, 6 msgpack list of jobs, each
--       {id, outcome, function, attempt, result record, result_ttl_ms, delay_ms, priority, error, dead-letter entry,
--        idempotency key or '', idempotency result, idempotency lock token, fencing token (0 = none)}
--       11 '1' on a grouped queue (jobs go back into their groups; the claim is claim_group's), 12-14 its group
--       limits (as claim_group.lua's ARGV 8-10)
--       outcome: complete | retry | defer | requeue | dead
-- Returns {#jobs, flag per job (1 recorded, 0 discarded: another attempt has started since), then claim.lua's reply
--          when claim_n > 0}
-- Fencing: every claim (and every recorded outcome) increments the job's token (rt:info:<id> field f). An outcome is
-- recorded when its token is still the job's token, i.e. no other attempt has started since, even if the lease
-- expired meanwhile (a Redis outage longer than the lease, a stalled worker) and the reaper already put the job back
-- in the queue. A completed idempotent job whose token is stale still writes its idempotency record: its side effect
-- happened, and the attempt that superseded it then finds the record instead of repeating the effect.
-- (Idempotency keys are derived per job: like arq, this needs a single Redis instance, not a cluster.)
-- @include now_fn.lua
-- @include claim_group_fn.lua
-- @include front_fn.lua
local owner, maxlen, queue = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local dlq_max, idem_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local now = server_now()
local BAND = 100000000000
local arq_owned = owner == ''
local jobs = cmsgpack.unpack(ARGV[6])
local out = {}
local dels, released = {}, {}
local stats = {completed = 0, retried = 0, dead = 0}
local G = ARGV[11] == '1' and gkeys(queue, KEYS[1]) or nil
local gconc = tonumber(ARGV[12] or 0)

local holders = {}
if not arq_owned then
  local lease_keys = {}
  for i, j in ipairs(jobs) do lease_keys[i] = 'arq:in-progress:' .. j[1] end
  holders = redis.call('MGET', unpack(lease_keys))
end

local function event(j, kind, extra_k, extra_v)
  if maxlen > 0 then
    redis.call('XADD', KEYS[4], '*', 'type', kind, 'job_id', j[1], 'function', j[3],
      'queue', queue, 'attempt', j[4], extra_k, extra_v)
  end
end

local function idem_done(ik, id, result)
  redis.call('HSET', ik, 'j', id, 's', 'done', 'r', result)
  redis.call('EXPIRE', ik, idem_ttl)
end

local function finish(i, j)
  local id, outcome = j[1], j[2]
  local info = 'rt:info:' .. id
  local ik = j[11]
  if ik ~= '' then
    local lock = ik .. ':lock'
    if redis.call('GET', lock) == j[13] then redis.call('DEL', lock) end
  end
  if not arq_owned then
    local holder, fence = holders[i], j[14] or 0
    local mine
    if holder and holder ~= owner then
      mine = false
    elseif fence > 0 then
      -- the token moves on when an attempt is recorded, so a late heartbeat of this attempt cannot take it back
      local token = redis.call('HINCRBY', info, 'f', 1)
      mine = token - 1 == fence
      if not mine then redis.call('HINCRBY', info, 'f', -1) end
    else
      mine = holder ~= false or redis.call('ZSCORE', KEYS[3], id) ~= false
    end
    if not mine then
      if outcome == 'complete' and ik ~= '' then idem_done(ik, id, j[12]) end
      return 0
    end
    if not holder then
      -- the lease expired (Redis outage, stalled worker): the reaper may have re-queued the job already
      redis.call('ZREM', KEYS[1], id)
      if G then redis.call('ZREM', gzset(G, record_group(id)), id) end
    end
    dels[#dels + 1] = 'arq:in-progress:' .. id
    released[#released + 1] = id
  end
  local g = gconc > 0 and grelease(G, id)
  if g and redis.call('EXISTS', gzset(G, g)) == 1 then gready(G, g, now) end  -- a slot of its group freed

  if outcome == 'complete' then
    if not arq_owned then
      redis.call('SET', 'arq:result:' .. id, j[5], 'PX', j[6])
      dels[#dels + 1] = 'arq:job:' .. id
    end
    if ik ~= '' then idem_done(ik, id, j[12]) end
    redis.call('PEXPIRE', info, j[6])  -- state and finish time are read from the result record
    event(j, 'completed', 'ms', math.floor(now))
    stats.completed = stats.completed + 1
    return 1
  end

  if outcome == 'dead' then
    if not arq_owned then
      redis.call('SET', 'arq:result:' .. id, j[5], 'PX', j[6])
      dels[#dels + 1] = 'arq:job:' .. id
    end
    redis.call('HSET', info, 's', 'dead', 'ft', math.floor(now), 'e', j[9])
    redis.call('PEXPIRE', info, j[6])
    if ik ~= '' and redis.call('HGET', ik, 's') ~= 'done' then redis.call('DEL', ik) end
    redis.call('SET', 'rt:dlq:' .. id, j[10])
    redis.call('ZADD', KEYS[6], math.floor(now), id)
    local over = redis.call('ZCARD', KEYS[6]) - dlq_max
    if over > 0 then
      local old = redis.call('ZRANGE', KEYS[6], 0, over - 1)
      for _, oid in ipairs(old) do redis.call('DEL', 'rt:dlq:' .. oid) end
      redis.call('ZREMRANGEBYRANK', KEYS[6], 0, over - 1)
    end
    event(j, 'dead', 'error', j[9])
    stats.dead = stats.dead + 1
    return 1
  end

  -- retry / defer / requeue: back to the queue after delay_ms, keeping the priority band; a job re-queued without
  -- a delay (shutdown, given back unstarted) goes to the front of its band
  local run_at, prio = now + j[7], j[8]
  local front = outcome == 'requeue' and j[7] <= 0
  if outcome ~= 'retry' then redis.call('HINCRBY', info, 'a', -1) end
  if j[9] ~= '' then redis.call('HSET', info, 'e', j[9]) end
  if G then
    gput(G, KEYS[2], g or record_group(id), id, front and now - FRONT or run_at, prio, now)
  elseif not arq_owned then
    if prio > 0 and run_at > now then
      redis.call('ZADD', KEYS[2], math.floor(run_at) * 16 + prio, id)
    elseif front then
      redis.call('ZADD', KEYS[1], front_of_band(now, prio), id)
    else
      redis.call('ZADD', KEYS[1], run_at - prio * BAND, id)
    end
  end
  if outcome == 'retry' then
    event(j, 'retrying', 'run_at', math.floor(run_at))
    stats.retried = stats.retried + 1
  else
    event(j, outcome == 'defer' and 'deferred' or 'requeued', 'run_at', math.floor(run_at))
  end
  return 1
end

out[1] = #jobs
for i, j in ipairs(jobs) do
  out[i + 1] = finish(i, j)
end
if maxlen > 0 and #jobs > 0 then redis.call('XTRIM', KEYS[4], 'MAXLEN', '~', maxlen) end  -- once, not per XADD
if #dels > 0 then redis.call('DEL', unpack(dels)) end
if #released > 0 then redis.call('ZREM', KEYS[3], unpack(released)) end
for field, n in pairs(stats) do
  if n > 0 then redis.call('HINCRBY', KEYS[5], field, n) end
end
local claim_n = tonumber(ARGV[7])
if claim_n > 0 then
  local k = {queue = KEYS[1], delayed = KEYS[2], active = KEYS[3], events = KEYS[4], rl = KEYS[7],
    paused = KEYS[8], wake = KEYS[9], stats = KEYS[5]}
  local claimed
  if G then
    claimed = gclaim(k, now, claim_n, tonumber(ARGV[8]), owner, maxlen, tonumber(ARGV[9]), tonumber(ARGV[10]),
      queue, gconc, tonumber(ARGV[13]), tonumber(ARGV[14]))
  else
    claimed = claim(k, now, claim_n, tonumber(ARGV[8]), owner, maxlen, tonumber(ARGV[9]), tonumber(ARGV[10]),
      queue)
  end
  for _, v in ipairs(claimed) do out[#out + 1] = v end
end
return out
