-- Move a job that has not started to a new run time (same priority).
-- KEYS: 1 queue (the job's group zset on a grouped queue), 2 delayed, 3 events, 4 wake list, 5 group ring (grouped)
-- ARGV: 1 id, 2 run_at_ms (-1 = now + delay), 3 priority, 4 delay_ms, 5 events_maxlen, 6 queue name, 7 expires_ms,
--       8 the job's group (grouped)
-- @include now_fn.lua
-- @include group_fn.lua
local id, run_at, prio, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), server_now()
if run_at < 0 then run_at = now + tonumber(ARGV[4]) end
local removed = redis.call('ZREM', KEYS[1], id) + redis.call('ZREM', KEYS[2], id)
if removed == 0 then return 0 end
if prio > 0 and run_at > now then
  redis.call('ZADD', KEYS[2], math.floor(run_at) * 16 + prio, id)
else
  redis.call('ZADD', KEYS[1], run_at - prio * BAND, id)
  if KEYS[5] then gready(gkeys(ARGV[6], ARGV[6]), ARGV[8], math.max(run_at, now)) end
end
redis.call('PEXPIRE', 'arq:job:' .. id, math.ceil(tonumber(ARGV[7]) + math.max(run_at - now, 0)))
if tonumber(ARGV[5]) > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'type', 'rescheduled', 'job_id', id, 'queue', ARGV[6],
    'run_at', math.floor(run_at))
end
redis.call('LPUSH', KEYS[4], 1)
redis.call('LTRIM', KEYS[4], 0, 0)
return 1
