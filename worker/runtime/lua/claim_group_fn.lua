-- @include group_fn.lua
-- @include claim_fn.lua

-- Move due priority-deferred jobs into their groups.
local function gpromote(G, delayed, now)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', math.floor(now) * 16 + 15, 'WITHSCORES', 'LIMIT', 0, 1000)
  for i = 1, #due, 2 do
    local s = tonumber(due[i + 1])
    local prio = s % 16
    local at = (s - prio) / 16
    if at <= now then
      redis.call('ZREM', delayed, due[i])
      gput(G, delayed, record_group(due[i]), due[i], at, prio, now)
    end
  end
end

local function gnext_due(G, k, now)
  local best = -1
  local first = redis.call('ZRANGE', G.ring, 0, 0, 'WITHSCORES')
  if #first > 0 then best = tonumber(first[2]) end
  local d = redis.call('ZRANGE', k.delayed, 0, 0, 'WITHSCORES')
  if #d > 0 then
    local at = math.floor(tonumber(d[2]) / 16)
    if best < 0 or at < best then best = at end
  end
  local q = redis.call('ZRANGE', k.queue, 0, 0, 'WITHSCORES')  -- the default group's deferred jobs
  if #q > 0 and redis.call('SISMEMBER', G.paused, '') == 0 then
    local at = tonumber(q[2])
    if best < 0 or at < best then best = at end
  end
  if best < 0 then return -1 end
  return math.max(best - now, 0)
end

-- Claim up to n due jobs of a grouped queue: the groups in the ring in round-robin order, each its fair share of
-- the batch (its highest priority, oldest jobs first), skipping groups at their concurrency (out of the ring
-- until one of their jobs finishes) or rate limit (back in the ring when a token is free) without leasing
-- anything. Same reply as claim(); the group of each leased job is kept in rt:gj:Q for finish and reap.
-- gconc: most leased jobs per group (0 = no limit); grate, gburst: jobs/s per group (0 = no limit), burst.
local function gclaim(k, now, n, lease, owner, maxlen, rate, burst, qname, gconc, grate, gburst)
  if redis.call('SISMEMBER', k.paused, qname) == 1 then
    return {0, -1}
  end
  local G = gkeys(qname, k.queue)
  gpromote(G, k.delayed, now)
  -- plain arq producers add to the default group without touching the ring
  if #redis.call('ZRANGEBYSCORE', k.queue, '-inf', now, 'LIMIT', 0, 1) > 0
      and redis.call('SISMEMBER', G.paused, '') == 0 then
    redis.call('ZADD', G.ring, 'NX', now, '')
  end
  local lim = now + 1  -- groups sent to the back during this call stay within reach of its later passes
  local window = redis.call('ZRANGEBYSCORE', G.ring, '-inf', lim, 'LIMIT', 0, n)
  if #window == 0 then
    return {0, gnext_due(G, k, now)}
  end

  local budget, tat, interval = n, 0, 0
  if rate > 0 then
    interval = 1000 / rate
    tat = tonumber(redis.call('GET', k.rl) or now)
    if tat < now then tat = now end
    local allowed = math.floor((now + burst * interval - tat) / interval)
    if allowed <= 0 then
      redis.call('HINCRBY', k.stats, 'rate_limited', 1)
      return {math.ceil(tat + interval - burst * interval - now), -1}
    end
    if allowed < n then budget = allowed end
  end

  local out = {0, -1}
  local acc = {claimed = {}, active_args = {}, job_keys = {}}
  local gjobs = {}
  local ginterval = 0
  if grate > 0 then ginterval = 1000 / grate end
  local picked, seq = 0, 0
  for pass = 1, 8 do
    if pass > 1 then
      if picked >= budget then break end
      window = redis.call('ZRANGEBYSCORE', G.ring, '-inf', lim, 'LIMIT', 0, budget - picked)
      if #window == 0 then break end
    end
    local share = math.max(1, math.floor((budget - picked) / #window))
    local before = picked
    for _, g in ipairs(window) do
      if picked >= budget then break end
      local room = math.min(share, budget - picked)
      local act = 0
      if gconc > 0 then
        act = tonumber(redis.call('HGET', G.act, g) or 0)
        if gconc - act < room then room = gconc - act end
      end
      local gtat = now
      if grate > 0 then
        gtat = tonumber(redis.call('GET', G.rl .. g) or now)
        if gtat < now then gtat = now end
        local allowed = math.floor((now + gburst * ginterval - gtat) / ginterval)
        if allowed < room then room = allowed end
      end
      local zkey = gzset(G, g)
      if room > 0 then
        local due = redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'WITHSCORES', 'LIMIT', 0, room)
        local first = #acc.claimed + 1
        for i = 1, #due, 2 do
          if lease_job(k, acc, out, due[i], tonumber(due[i + 1]), now, lease, owner, maxlen, qname) then
            gjobs[#gjobs + 1] = due[i]
            gjobs[#gjobs + 1] = g
          end
        end
        local m = #acc.claimed - first + 1
        if m > 0 then
          redis.call('ZREM', zkey, unpack(acc.claimed, first))
          redis.call('HINCRBY', G.act, g, m)
          act = act + m
          picked = picked + m
          if grate > 0 then
            gtat = gtat + m * ginterval
            redis.call('SET', G.rl .. g, gtat, 'PX', math.ceil(gtat - now) + 1000)
          end
        end
      end
      -- the group's next turn
      local head = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')
      if #head == 0 or (gconc > 0 and act >= gconc) then
        -- empty: forgotten until its next job; at its concurrency: back when one of its jobs finishes
        redis.call('ZREM', G.ring, g)
      else
        local at = tonumber(head[2])
        if at < now - BAND / 2 then at = now end  -- a priority job: due
        if at > now and g == '' then
          redis.call('ZREM', G.ring, g)  -- default group: every claim re-adds it once its head is due
        else
          if grate > 0 then
            local free = gtat + ginterval - gburst * ginterval  -- when its next token frees
            if free > at then at = free end
          end
          if at <= now then
            seq = seq + 1
            at = now + seq * 0.001  -- served or skipped: to the back of the round
          end
          redis.call('ZADD', G.ring, at, g)
        end
      end
    end
    if picked == before then break end
  end

  if #gjobs > 0 then redis.call('HSET', G.jobs, unpack(gjobs)) end
  leased(k, acc, out, maxlen)
  if rate > 0 and picked > 0 then
    if budget < n and picked == budget then redis.call('HINCRBY', k.stats, 'rate_limited', 1) end
    tat = tat + picked * interval
    redis.call('SET', k.rl, tat, 'PX', math.ceil(tat - now) + 1000)
  end
  if picked == n then
    -- a full batch: more may be due, wake another worker
    redis.call('LPUSH', k.wake, 1)
    redis.call('LTRIM', k.wake, 0, 0)
  end
  if picked == 0 then out[2] = gnext_due(G, k, now) end
  return out
end
