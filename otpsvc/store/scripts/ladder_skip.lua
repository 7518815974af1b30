-- Move past an escalation step another worker took and did not finish (it died between taking
-- the step and recording its call): the step is not placed again; the next one is due after its
-- wait.
-- KEYS[1]  the verification record
-- ARGV[1]  the step taken (0 for the first call)       ARGV[2]  now, ms
-- KEYS and ARGV end with the event shard's (see _events.lua).
-- Returns 1 when the ladder goes on, 0 when it is over.
local vid = ev_vid(KEYS[1])
local f = redis.call('HMGET', KEYS[1], 'st', 'ld', 'li')
local step = tonumber(ARGV[1])
if f[1] ~= 'pending' or not f[2] then
  redis.call('ZREM', EV_LADDER, vid)
  return 0
end
if tonumber(f[3] or '-1') < step then
  redis.call('HSET', KEYS[1], 'li', step)
end
local steps = ladder_steps(f[2])
if step + 1 < #steps then
  ev_due(EV_LADDER, tonumber(ARGV[2]) + steps[step + 1][2] * 1000, vid)
  return 1
end
redis.call('ZREM', EV_LADDER, vid)
return 0
