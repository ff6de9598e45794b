-- arq's own loop (compat mode) reads only the queue zset: keep up to `depth` due jobs there, fed from the groups
-- round robin (one job per group per round), so arq serves the groups fairly too. Per-group limits are not
-- applied on arq's loop (they need our claims).
-- KEYS: 1 queue zset, 2 delayed zset
-- ARGV: 1 queue name, 2 depth
-- Returns the number of jobs moved.
-- @include now_fn.lua
-- @include claim_group_fn.lua
local now = server_now()
local G = gkeys(ARGV[1], KEYS[1])
gpromote(G, KEYS[2], now)
local want = tonumber(ARGV[2]) - redis.call('ZCOUNT', KEYS[1], '-inf', now)
if want <= 0 then return 0 end
local window = redis.call('ZRANGEBYSCORE', G.ring, '-inf', now, 'LIMIT', 0, want + 1)
local moved, seq = 0, 0
local live = {}
for _, g in ipairs(window) do
  if g ~= '' then live[#live + 1] = g end
end
local turns, gone = {}, {}
while moved < want and #live > 0 do
  local again = {}
  for _, g in ipairs(live) do
    if moved >= want then break end
    local z = gzset(G, g)
    local popped = redis.call('ZPOPMIN', z)
    if #popped == 0 then
      gone[g] = true
    elseif tonumber(popped[2]) > now then
      redis.call('ZADD', z, popped[2], popped[1])
      turns[g] = tonumber(popped[2])
    else
      redis.call('ZADD', KEYS[1], popped[2], popped[1])
      moved = moved + 1
      seq = seq + 1
      turns[g] = now + seq * 0.001
      again[#again + 1] = g
    end
  end
  live = again
end
for g, _ in pairs(gone) do redis.call('ZREM', G.ring, g) end
for g, at in pairs(turns) do
  if not gone[g] then redis.call('ZADD', G.ring, at, g) end
end
return moved
