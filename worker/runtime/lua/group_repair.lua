-- Maintenance of one grouped queue's bookkeeping (what the state moves cannot leave behind unless something was
-- interrupted or edited by hand): group entries of jobs no longer leased are dropped and the per-group active
-- counts recounted; ring entries of empty groups are dropped; groups with jobs missing from the ring (ARGV 2..,
-- found by the caller's SCAN) are put back unless paused.
-- KEYS: 1 queue zset, 2 active zset
-- ARGV: 1 queue name, 2.. groups that have a group zset
-- Returns {stale job entries removed, counts fixed, ring entries removed, groups re-added}
-- @include now_fn.lua
-- @include group_fn.lua
local now = server_now()
local G = gkeys(ARGV[1], KEYS[1])
local stale, fixed, dropped, readded = 0, 0, 0, 0
local counts = {}
local entries = redis.call('HGETALL', G.jobs)
for i = 1, #entries, 2 do
  local id, g = entries[i], entries[i + 1]
  if redis.call('ZSCORE', KEYS[2], id) then
    counts[g] = (counts[g] or 0) + 1
  else
    redis.call('HDEL', G.jobs, id)
    stale = stale + 1
  end
end
local current = redis.call('HGETALL', G.act)
for i = 1, #current, 2 do
  local g, n = current[i], tonumber(current[i + 1])
  if (counts[g] or 0) ~= n then
    fixed = fixed + 1
    if counts[g] then redis.call('HSET', G.act, g, counts[g]) else redis.call('HDEL', G.act, g) end
  end
  counts[g] = nil
end
for g, n in pairs(counts) do
  redis.call('HSET', G.act, g, n)
  fixed = fixed + 1
end
for _, g in ipairs(redis.call('ZRANGE', G.ring, 0, 9999)) do
  if redis.call('EXISTS', gzset(G, g)) == 0 then
    redis.call('ZREM', G.ring, g)
    dropped = dropped + 1
  end
end
for i = 2, #ARGV do
  local g = ARGV[i]
  if redis.call('SISMEMBER', G.paused, g) == 0 and redis.call('ZADD', G.ring, 'NX', now, g) == 1 then
    readded = readded + 1
  end
end
return {stale, fixed, dropped, readded}
