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

-- Claim up to n due jobs of a grouped queue: the first n groups of the ring (round robin: served groups go to its
-- back), each its share of the batch in rounds (its highest priority, oldest jobs first), skipping groups at their
-- concurrency (out of the ring until one of their jobs finishes) or rate limit (back in the ring when a token is
-- free) without leasing anything. Same reply as claim(). With a concurrency limit the group of each leased job is
-- kept in rt:gj:Q and leased jobs are counted per group in rt:ga:Q (finish and reap release them).
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
  local window = redis.call('ZRANGEBYSCORE', G.ring, '-inf', now, 'LIMIT', 0, n)
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
  local ginterval = 0
  if grate > 0 then ginterval = 1000 / grate end
  local picked = 0
  local st = {}  -- per visited group: leased (m), active count, rate tat, empty, head (first run time not due)
  local visited = {}
  local live = window
  while picked < budget and #live > 0 do
    local share = math.max(1, math.floor((budget - picked) / #live))
    local again = {}
    for _, g in ipairs(live) do
      if picked >= budget then break end
      local s = st[g]
      if not s then
        s = {m = 0, act = 0, tat = now}
        if gconc > 0 then s.act = tonumber(redis.call('HGET', G.act, g) or 0) end
        if grate > 0 then
          s.tat = tonumber(redis.call('GET', G.rl .. g) or now)
          if s.tat < now then s.tat = now end
        end
        st[g] = s
        visited[#visited + 1] = g
      end
      local room = math.min(share, budget - picked)
      if gconc > 0 and gconc - s.act - s.m < room then room = gconc - s.act - s.m end
      if grate > 0 then
        local allowed = math.floor((now + gburst * ginterval - s.tat) / ginterval) - s.m
        if allowed < room then room = allowed end
      end
      if room > 0 then
        local zkey = gzset(G, g)
        local popped = redis.call('ZPOPMIN', zkey, room)
        local back = {}
        for i = 1, #popped, 2 do
          local id, score = popped[i], tonumber(popped[i + 1])
          if score <= now and lease_job(k, acc, out, id, score, now, lease, owner, maxlen, qname) then
            s.m = s.m + 1
            picked = picked + 1
            if gconc > 0 then
              s.jobs = s.jobs or {}
              s.jobs[#s.jobs + 1] = id
            end
          else
            back[#back + 1] = score  -- not due yet (or run by arq's own loop): stays
            back[#back + 1] = id
            if score > now and (not s.head or score < s.head) then s.head = score end
          end
        end
        if #back > 0 then
          redis.call('ZADD', zkey, unpack(back))
        elseif #popped < room * 2 then
          s.empty = true
        end
        if #popped == room * 2 and #back == 0 then again[#again + 1] = g end  -- may have more
      end
    end
    live = again
  end

  -- every visited group's next turn, in one ZADD (and one ZREM) of the ring
  local turns, gone, gjobs = {}, {}, {}
  local seq = 0
  for _, g in ipairs(visited) do
    local s = st[g]
    if s.m > 0 then
      if gconc > 0 then
        redis.call('HINCRBY', G.act, g, s.m)
        for _, id in ipairs(s.jobs) do
          gjobs[#gjobs + 1] = id
          gjobs[#gjobs + 1] = g
        end
      end
      if grate > 0 then
        s.tat = s.tat + s.m * ginterval
        redis.call('SET', G.rl .. g, s.tat, 'PX', math.ceil(s.tat - now) + 1000)
      end
    end
    local at = now
    if s.head then at = s.head end
    if s.empty or (gconc > 0 and s.act + s.m >= gconc) or (s.head and g == '') then
      -- empty: forgotten until its next job; at its concurrency: back when one of its jobs finishes;
      -- default group not due: every claim re-adds it once its head is due
      gone[#gone + 1] = g
    else
      if grate > 0 then
        local free = s.tat + ginterval - gburst * ginterval  -- when its next token frees
        if free > at then at = free end
      end
      if at <= now then
        seq = seq + 1
        at = now + seq * 0.001  -- served or skipped: to the back of the round
      end
      turns[#turns + 1] = at
      turns[#turns + 1] = g
    end
  end
  if #turns > 0 then redis.call('ZADD', G.ring, unpack(turns)) end
  if #gone > 0 then redis.call('ZREM', G.ring, unpack(gone)) end
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
