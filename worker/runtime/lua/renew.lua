-- Heartbeat: extend the leases of the jobs this worker runs (and their idempotency locks).
-- KEYS: 1 active zset
-- ARGV: 1 lease_ms, 2 worker_id, then groups of 4: id, priority, lock key ('' = none), lock token
-- Returns the ids whose lease this worker has lost (another worker took the job after a stall).
-- @include now_fn.lua
local now, lease, me = server_now(), tonumber(ARGV[1]), ARGV[2]
local lost = {}
for i = 3, #ARGV, 4 do
  local id = ARGV[i]
  local key = 'arq:in-progress:' .. id
  local holder = redis.call('GET', key)
  if holder == me or (not holder and redis.call('ZSCORE', KEYS[1], id)) then
    redis.call('SET', key, me, 'PX', lease)
    redis.call('ZADD', KEYS[1], math.floor(now + lease) * 16 + tonumber(ARGV[i + 1]), id)
    if ARGV[i + 2] ~= '' and redis.call('GET', ARGV[i + 2]) == ARGV[i + 3] then
      redis.call('PEXPIRE', ARGV[i + 2], lease)
    end
  else
    lost[#lost + 1] = id
  end
end
return lost
