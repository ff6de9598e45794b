-- @include promote_fn.lua

-- Job groups (fair share between tenants) of queue Q:
--   rt:g:Q:<g>   zset of the group's waiting jobs, scored like the queue zset (the default group '' IS the queue
--                zset: plain arq producers and jobs without a group land there)
--   rt:gr:Q      the ring: groups with work, score = when the group may be served next (its last turn, its
--                first run time, or its rate limit); claims serve the lowest scores first = round robin
--   rt:ga:Q      hash group -> jobs leased (running or prefetched); rt:gj:Q hash active job id -> its group
--   rt:gp:Q      paused groups; rt:grl:Q:<g> the group's rate limit (GCRA, expires)
-- Priority-deferred jobs wait in the queue's delayed zset like ungrouped ones; their record ('g') has the group.
-- Every key of a group goes away when the group has no jobs (only a pause stays).
local function gkeys(qname, queue_key)
  return {ring = 'rt:gr:' .. qname, act = 'rt:ga:' .. qname, jobs = 'rt:gj:' .. qname, paused = 'rt:gp:' .. qname,
    prefix = 'rt:g:' .. qname .. ':', rl = 'rt:grl:' .. qname .. ':', queue = queue_key}
end

local function gzset(G, g)
  if g == '' then return G.queue end
  return G.prefix .. g
end

-- The group got work at `at` (enqueue, retry, reclaim, resume): in the ring no later than `at`, unless paused.
local function gready(G, g, at)
  if redis.call('SISMEMBER', G.paused, g) == 0 then redis.call('ZADD', G.ring, 'LT', at, g) end
end

-- Put a job (back) into its group: the group zset, or the queue's delayed zset for a priority job in the future.
local function gput(G, delayed, g, id, run_at, prio, now)
  if prio > 0 and run_at > now then
    redis.call('ZADD', delayed, math.floor(run_at) * 16 + prio, id)
  else
    redis.call('ZADD', gzset(G, g), run_at - prio * BAND, id)
    gready(G, g, math.max(run_at, now))
  end
end

-- A leased job leaves the active set (finished or reclaimed): its group's active count drops. Returns the group
-- (nil when the job was not leased by a grouped claim).
local function grelease(G, id)
  local g = redis.call('HGET', G.jobs, id)
  if not g then return nil end
  redis.call('HDEL', G.jobs, id)
  if redis.call('HINCRBY', G.act, g, -1) <= 0 then redis.call('HDEL', G.act, g) end
  return g
end

-- The group of a job from its record ('' = default group: no record, not ours, or no 'g').
local function record_group(id)
  local raw = redis.call('GET', 'arq:job:' .. id)
  if raw then
    local ok, rec = pcall(cmsgpack.unpack, raw)
    if ok and type(rec) == 'table' and type(rec.g) == 'string' then return rec.g end
  end
  return ''
end
