-- Cancel a job that has not started: it is removed and will never run.
-- KEYS: 1 queue, 2 delayed, 3 events, 4 idempotency key (or 'rt:none')
-- ARGV: 1 id, 2 events_maxlen, 3 queue name
local id = ARGV[1]
local removed = redis.call('ZREM', KEYS[1], id) + redis.call('ZREM', KEYS[2], id)
if removed == 0 then return 0 end
redis.call('DEL', 'arq:job:' .. id)
local t = redis.call('TIME')
redis.call('HSET', 'rt:info:' .. id, 's', 'cancelled', 'ft', t[1] * 1000 + math.floor(t[2] / 1000))
redis.call('EXPIRE', 'rt:info:' .. id, 86400)
if KEYS[4] ~= 'rt:none' then redis.call('DEL', KEYS[4]) end
if tonumber(ARGV[2]) > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'type', 'cancelled', 'job_id', id, 'queue', ARGV[3])
end
return 1
