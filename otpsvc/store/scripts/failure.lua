-- Count one wrong code against the number's daily failure caps (a new code never resets them),
-- and tell the client when that check used the verification's last attempt.
-- KEYS[1]  this client's failed checks of the number     KEYS[2]  every client's (same hash tag)
-- KEYS[3]  the verification record
-- ARGV[1]  how long a count lives, ms (from its first failure)
-- ARGV[2]  now, ms                                        ARGV[3]  max check attempts (when
--          the record keeps none of its own, field 'ma')
-- KEYS and ARGV end with the event shard's (see _events.lua): verification.max_attempts_reached,
-- once (field 'lk' marks it told).
for i = 1, 2 do
  if redis.call('INCR', KEYS[i]) == 1 then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  end
end
local f = redis.call('HMGET', KEYS[3], 'st', 'a', 'lk', 'ma')
if f[1] == 'pending' and tonumber(f[2]) >= tonumber(f[4] or ARGV[3]) and not f[3] then
  redis.call('HSET', KEYS[3], 'lk', 1)
  ev_emit(KEYS[3], 'verification.max_attempts_reached', ARGV[2], true)
end
return 1
