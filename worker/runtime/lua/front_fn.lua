-- The front of a priority band: reclaimed (stalled) and re-queued jobs are scored a quarter band ahead of the
-- band's fresh jobs (score = t - priority * BAND - FRONT), so they run before any backlog of their priority and
-- still after every job of a higher priority. claim.lua reads the priority back with round((now - score) / BAND).
local FRONT = 25000000000
local function front_of_band(now, prio)
  return now - prio * 100000000000 - FRONT
end
