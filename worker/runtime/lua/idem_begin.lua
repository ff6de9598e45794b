-- Before running an idempotent job: reuse a stored result, or take the execution lock.
-- KEYS: 1 idempotency key
-- ARGV: 1 job_id, 2 lock token, 3 lease_ms, 4 ttl_s
-- Returns {'done', result} | {'busy', pttl_ms} | {'go'}
local k = KEYS[1]
if redis.call('HGET', k, 's') == 'done' then
  return {'done', redis.call('HGET', k, 'r') or ''}
end
local lock = k .. ':lock'
local holder = redis.call('GET', lock)
if holder and holder ~= ARGV[2] then
  return {'busy', redis.call('PTTL', lock)}
end
redis.call('SET', lock, ARGV[2], 'PX', tonumber(ARGV[3]))
if not redis.call('HGET', k, 'j') then redis.call('HSET', k, 'j', ARGV[1]) end
redis.call('HSET', k, 's', 'running')
redis.call('EXPIRE', k, tonumber(ARGV[4]))
return {'go'}
