-- Count one failure of a provider; open its circuit at the threshold, or at once when it failed
-- again soon after a cool-off (the half-open trial failed).
-- KEYS[1]  failure counter       KEYS[2]  open marker (its value: open until, ms)
-- KEYS[3]  recently-tripped marker; all three share the provider's hash tag
-- ARGV[1]  counting window, ms   ARGV[2]  threshold   ARGV[3]  cool-off, ms   ARGV[4]  now, ms
-- Returns the time the circuit is open until (ms), or 0 when it stays closed
local failures = redis.call('INCR', KEYS[1])
if failures == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
local tripped = redis.call('EXISTS', KEYS[3]) == 1
if failures >= tonumber(ARGV[2]) or tripped then
  local open_until = tonumber(ARGV[4]) + tonumber(ARGV[3])
  redis.call('SET', KEYS[2], open_until, 'PX', ARGV[3])
  redis.call('SET', KEYS[3], 1, 'PX', tonumber(ARGV[3]) + tonumber(ARGV[1]))
  redis.call('DEL', KEYS[1])
  return open_until
end
return 0
