-- Return jobs whose worker died (lease expired) to the front of their priority band.
-- KEYS: 1 active, 2 queue, 3 events, 4 wake list
-- ARGV: 1 events_maxlen, 2 queue name, 3 '1' on a grouped queue (each job goes back into its group)
-- @include now_fn.lua
-- @include group_fn.lua
-- @include front_fn.lua
local now, maxlen = server_now(), tonumber(ARGV[1])
local G = ARGV[3] == '1' and gkeys(ARGV[2], KEYS[2]) or nil
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', math.floor(now) * 16, 'WITHSCORES', 'LIMIT', 0, 100)
local n = 0
for i = 1, #stale, 2 do
  local id = stale[i]
  if redis.call('EXISTS', 'arq:in-progress:' .. id) == 0 then
    local prio = tonumber(stale[i + 1]) % 16
    redis.call('ZREM', KEYS[1], id)
    if G then
      gput(G, 'rt:delayed:' .. ARGV[2], grelease(G, id) or record_group(id), id, now - FRONT, prio, now)
    else
      redis.call('ZADD', KEYS[2], front_of_band(now, prio), id)
    end
    if maxlen > 0 then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', maxlen, '*', 'type', 'stalled', 'job_id', id, 'queue', ARGV[2])
    end
    n = n + 1
  end
end
if n > 0 then
  redis.call('LPUSH', KEYS[4], 1)
  redis.call('LTRIM', KEYS[4], 0, 0)
end
return n
