-- All scheduling uses the Redis server's clock (ms, with microsecond fraction): no skew between workers.
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
