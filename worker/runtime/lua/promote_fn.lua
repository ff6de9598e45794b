local BAND = 100000000000

-- Move due priority-deferred jobs (score run_at * 16 + priority) into the queue's priority band.
local function promote(queue_key, delayed_key, now)
  local due = redis.call('ZRANGEBYSCORE', delayed_key, '-inf', math.floor(now) * 16 + 15, 'WITHSCORES', 'LIMIT', 0, 1000)
  for i = 1, #due, 2 do
    local s = tonumber(due[i + 1])
    local prio = s % 16
    local at = (s - prio) / 16
    if at <= now then
      redis.call('ZADD', queue_key, at - prio * BAND, due[i])
      redis.call('ZREM', delayed_key, due[i])
    end
  end
  return #due / 2
end
