-- Promote due priority-deferred jobs of one queue (used beside arq's own worker loop).
-- KEYS: 1 queue, 2 delayed. ARGV: 1 now_ms
-- @include promote_fn.lua
return promote(KEYS[1], KEYS[2], tonumber(ARGV[1]))
