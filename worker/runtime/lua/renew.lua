-- Heartbeat: extend the leases of the jobs this worker runs (and their idempotency locks).
-- KEYS: 1 active zset, 2 queue zset
-- ARGV: 1 lease_ms, 2 worker_id, 3 '1' on a grouped queue, 4 queue name, then groups of 5: id, priority,
--       lock key ('' = none), lock token, fencing token (0 = none)
-- A lease that expired (a Redis outage longer than the lease, a stalled worker) is taken back when the job's fencing
-- token is still this attempt's, i.e. no other attempt has started since, even if the reaper re-queued the job.
-- Returns the ids whose lease this worker has lost (another attempt has started since).
-- @include now_fn.lua
-- @include group_fn.lua
local now, lease, me = server_now(), tonumber(ARGV[1]), ARGV[2]
local G = ARGV[3] == '1' and gkeys(ARGV[4], KEYS[2]) or nil
local lost = {}
for i = 5, #ARGV, 5 do
  local id = ARGV[i]
  local key = 'arq:in-progress:' .. id
  local holder = redis.call('GET', key)
  local fence = tonumber(ARGV[i + 4])
  local mine = false
  if holder == me or not holder then
    if fence > 0 then
      mine = tonumber(redis.call('HGET', 'rt:info:' .. id, 'f')) == fence
    else
      mine = holder == me or redis.call('ZSCORE', KEYS[1], id) ~= false
    end
  end
  if mine then
    if not holder then  -- re-queued by the reaper meanwhile: take it back
      redis.call('ZREM', KEYS[2], id)
      if G then redis.call('ZREM', gzset(G, record_group(id)), id) end
    end
    redis.call('SET', key, me, 'PX', lease)
    redis.call('ZADD', KEYS[1], math.floor(now + lease) * 16 + tonumber(ARGV[i + 1]), id)
    local lock = ARGV[i + 2]
    if lock ~= '' then
      local owner = redis.call('GET', lock)
      if owner == ARGV[i + 3] then
        redis.call('PEXPIRE', lock, lease)
      elseif not owner then
        redis.call('SET', lock, ARGV[i + 3], 'PX', lease)
      end
    end
  else
    lost[#lost + 1] = id
  end
end
return lost
