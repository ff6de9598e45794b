-- Promote due priority-deferred jobs of one queue (used beside arq's own worker loop).
-- KEYS: 1 queue, 2 delayed
-- @include now_fn.lua
-- @include promote_fn.lua
return promote(KEYS[1], KEYS[2], server_now())
