-- Per-group counts of one grouped queue: waiting (due), delayed (run time ahead), active (leased), paused.
-- KEYS: 1 queue zset, 2 delayed zset, 3 active zset
-- ARGV: 1 queue name, 2 most groups to collect from the ring, 3.. groups to report (none = collect them: the first
--       of the ring, every group with leased jobs, every paused group, the groups of priority-deferred jobs,
--       the default group when it has jobs)
-- Leased and priority-deferred jobs are attributed to groups by their records (at most 10,000 of each).
-- Returns {groups in the ring, waiting and run-time-ahead jobs in the zsets of the reported groups other than the
--          default one (queue totals add them to the queue zset's and the delayed zset's counts),
--          g1, waiting1, delayed1, active1, paused1, g2, ...}
-- @include now_fn.lua
-- @include group_fn.lua
local now = server_now()
local G = gkeys(ARGV[1], KEYS[1])
local order, seen = {}, {}
local function add(g)
  if not seen[g] then
    seen[g] = true
    order[#order + 1] = g
  end
end
local function by_group(zset)
  local n = {}
  for _, id in ipairs(redis.call('ZRANGE', zset, 0, 9999)) do
    local g = record_group(id)
    n[g] = (n[g] or 0) + 1
  end
  return n
end
local pdelayed, active = by_group(KEYS[2]), by_group(KEYS[3])
if #ARGV > 2 then
  for i = 3, #ARGV do add(ARGV[i]) end
else
  for _, g in ipairs(redis.call('ZRANGE', G.ring, 0, tonumber(ARGV[2]) - 1)) do add(g) end
  for g, _ in pairs(active) do add(g) end
  for _, g in ipairs(redis.call('SMEMBERS', G.paused)) do add(g) end
  for g, _ in pairs(pdelayed) do add(g) end
  if redis.call('EXISTS', KEYS[1]) == 1 then add('') end  -- plain arq producers do not touch the ring
end
local out = {redis.call('ZCARD', G.ring), 0, 0}
for _, g in ipairs(order) do
  local z = gzset(G, g)
  local waiting, later = redis.call('ZCOUNT', z, '-inf', now), redis.call('ZCOUNT', z, '(' .. now, '+inf')
  if g ~= '' then
    out[2] = out[2] + waiting
    out[3] = out[3] + later
  end
  out[#out + 1] = g
  out[#out + 1] = waiting
  out[#out + 1] = later + (pdelayed[g] or 0)
  out[#out + 1] = active[g] or 0
  out[#out + 1] = redis.call('SISMEMBER', G.paused, g)
end
return out
