-- GCRA limiter: take one token from KEYS[1]. ARGV: 1 rate (tokens per period), 2 period_ms, 3 burst
-- Returns 0 when allowed, else the milliseconds to wait before a token is free.
-- @include now_fn.lua
local now, rate, period, burst = server_now(), tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local interval = period / rate
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat + interval - now > burst * interval then
  return math.ceil(tat + interval - burst * interval - now)
end
tat = tat + interval
redis.call('SET', KEYS[1], tat, 'PX', math.ceil(tat - now) + 1000)
return 0
