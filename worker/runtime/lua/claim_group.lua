-- Claim up to N due jobs of a grouped queue for one worker, round robin between its groups (see claim_group_fn.lua).
-- KEYS, ARGV 1-7 and reply: as claim.lua; ARGV 8 most leased jobs per group (0 = no limit),
-- 9 jobs/s per group (0 = no limit), 10 the group's burst
-- @include now_fn.lua
-- @include claim_group_fn.lua
local k = {queue = KEYS[1], delayed = KEYS[2], active = KEYS[3], events = KEYS[4], rl = KEYS[5], paused = KEYS[6],
  wake = KEYS[7], stats = KEYS[8]}
return gclaim(k, server_now(), tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]),
  tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]))
