-- Claim up to N due jobs of one queue for one worker, in one round trip (see claim_fn.lua).
-- KEYS: 1 queue, 2 delayed, 3 active, 4 events, 5 rate-limit key, 6 paused set, 7 wake list, 8 stats hash
-- ARGV: 1 n, 2 lease_ms, 3 worker_id, 4 events_maxlen, 5 rate per second (0 = unlimited), 6 burst, 7 queue name
-- Returns: {retry_after_ms, ms_until_next_due_or_-1, id1, payload1, attempt1, prio1, fence1, id2, ...}
-- @include now_fn.lua
-- @include claim_fn.lua
local k = {queue = KEYS[1], delayed = KEYS[2], active = KEYS[3], events = KEYS[4], rl = KEYS[5], paused = KEYS[6],
  wake = KEYS[7], stats = KEYS[8]}
return claim(k, server_now(), tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]),
  tonumber(ARGV[6]), ARGV[7])
