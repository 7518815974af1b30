-- End a verification's escalation ladder: a step was refused (a limit, the budget, the send cap)
-- or could not be placed; the client is told why.
-- KEYS[1]  the verification record
-- ARGV[1]  now, ms          ARGV[2]  why (the limit that refused, or what went wrong)
-- KEYS and ARGV end with the event shard's (see _events.lua): verification.escalation_stopped.
-- Returns 1 when the ladder of a pending verification ended here, 0 otherwise.
local vid = ev_vid(KEYS[1])
redis.call('ZREM', EV_LADDER, vid)
-- No step follows: the sealed number has no more use.
redis.call('HDEL', KEYS[1], 'pe', 'pp')
if redis.call('HGET', KEYS[1], 'st') ~= 'pending' then
  return 0
end
redis.call('HSET', KEYS[1], 'lx', ARGV[2])
ev_emit(KEYS[1], 'verification.escalation_stopped', ARGV[1], false, {why = ARGV[2]})
return 1
