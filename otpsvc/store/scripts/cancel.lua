-- Cancel a verification: its code stops working. Canceling twice answers the same.
-- KEYS[1]  the verification record
-- ARGV[1]  now, ms        ARGV[2]  the calling client      ARGV[3]  max check attempts (when the record
-- keeps none of its own, field 'ma')
-- KEYS and ARGV end with the event shard's (see _events.lua): verification.canceled, once.
-- Returns 'canceled' | 'not_found' | 'locked' (attempts used up: the lock must outlive a cancel)
local f = redis.call('HMGET', KEYS[1], 'c', 'st', 'ea', 'a', 'ma')
if f[1] ~= ARGV[2] then
  return 'not_found'
end
if f[2] == 'canceled' then
  return 'canceled'
end
if f[2] ~= 'pending' or tonumber(f[3]) <= tonumber(ARGV[1]) then
  return 'not_found'
end
if tonumber(f[4]) >= tonumber(f[5] or ARGV[3]) then
  return 'locked'
end
redis.call('HSET', KEYS[1], 'st', 'canceled', 'fa', ARGV[1])
redis.call('HDEL', KEYS[1], 'h')
ev_emit(KEYS[1], 'verification.canceled', ARGV[1], true)
return 'canceled'
