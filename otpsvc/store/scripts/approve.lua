-- Consume a verification whose code matched: exactly one approval per verification.
-- The attempt begin_check took for this check is handed back: only wrong codes count.
-- KEYS[1]  the verification record
-- ARGV[1]  generation of the send whose code matched      ARGV[2]  now, ms
-- KEYS and ARGV end with the event shard's (see _events.lua): verification.approved.
-- Returns 'approved' | 'superseded' (a resend replaced that code) | 'not_found'
local f = redis.call('HMGET', KEYS[1], 'st', 'g', 'ea')
if f[1] ~= 'pending' or tonumber(f[3]) <= tonumber(ARGV[2]) then
  return 'not_found'
end
if tonumber(f[2]) ~= tonumber(ARGV[1]) then
  return 'superseded'
end
redis.call('HSET', KEYS[1], 'st', 'approved', 'fa', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'a', -1)
redis.call('HDEL', KEYS[1], 'h')
ev_emit(KEYS[1], 'verification.approved', ARGV[2], true)
return 'approved'
