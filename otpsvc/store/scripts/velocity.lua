-- Count one call against every velocity limit and the call budget, all or nothing.
-- Each counter is a sliding window: a sorted set of the calls of the last <window> ms, so
-- "N per hour" holds for any hour, not only for clock hours.
-- Every key shares the hash tag {<prefix>:velocity}: one slot holds all counters.
-- KEYS[1]  the kill switch: while it exists, no call is placed
-- KEYS[2..] one sorted set per limit
-- ARGV[1]  now, ms          ARGV[2]  this call's unique member (its verification id)
-- ARGV[3..] limit and window (ms) of each counter: KEYS[i] has ARGV[2 * i - 1], ARGV[2 * i]
-- Returns {0} when counted; {i, ms until a call leaves KEYS[i]'s window} when its limit is
-- reached (nothing counted); {1, 0} when the kill switch is on
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {1, 0}
end
local now = tonumber(ARGV[1])
for i = 2, #KEYS do
  local limit, window = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  if redis.call('ZCARD', KEYS[i]) >= limit then
    local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    return {i, tonumber(oldest[2]) + window - now}
  end
end
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], now, ARGV[2])
  redis.call('PEXPIRE', KEYS[i], ARGV[2 * i])
end
return {0}
