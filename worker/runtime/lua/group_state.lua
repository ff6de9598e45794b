-- Pause or resume one group of a queue. Paused: out of the ring (claims skip it), running jobs finish.
-- KEYS: 1 queue zset, 2 wake list
-- ARGV: 1 queue name, 2 group ('' = default group), 3 'pause' | 'resume'
-- Returns 1 when the state changed.
-- @include now_fn.lua
-- @include group_fn.lua
local G = gkeys(ARGV[1], KEYS[1])
local g = ARGV[2]
if ARGV[3] == 'pause' then
  redis.call('ZREM', G.ring, g)
  return redis.call('SADD', G.paused, g)
end
local changed = redis.call('SREM', G.paused, g)
if redis.call('EXISTS', gzset(G, g)) == 1 then
  gready(G, g, server_now())  -- a claim finds out whether its head is due or it is at its limits
  redis.call('LPUSH', KEYS[2], 1)
  redis.call('LTRIM', KEYS[2], 0, 0)
end
return changed
