-- Apply the key a person pressed on a keypress-mode call: 1 approves, 9 denies and blocks the number.
-- A code-mode verification is never approved here.
-- KEYS[1]  the verification record        KEYS[2]  the number's deny block (same hash tag)
-- ARGV[1]  the key pressed                ARGV[2]  now, ms
-- ARGV[3]  how long a denial blocks new starts for the number, ms
-- ARGV[4]  the send the key press is about ('' when the callback does not say: the current one)
-- One key press is accepted per send (field 'kg' holds the send that had it): a replayed or
-- later report for the same send, or one about an older send, changes nothing.
-- Returns 'approved' | 'denied' | 'ignored'
local f = redis.call('HMGET', KEYS[1], 'm', 'st', 'ea', 'g', 'kg')
if f[1] ~= 'k' or f[2] ~= 'pending' or tonumber(f[3]) <= tonumber(ARGV[2]) then
  return 'ignored'
end
if (ARGV[4] ~= '' and tonumber(ARGV[4]) ~= tonumber(f[4])) or f[5] == f[4] then
  return 'ignored'
end
redis.call('HSET', KEYS[1], 'kg', f[4])
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'st', 'approved', 'fa', ARGV[2])
  return 'approved'
end
if ARGV[1] == '9' then
  redis.call('HSET', KEYS[1], 'st', 'denied', 'fa', ARGV[2])
  redis.call('SET', KEYS[2], 1, 'PX', ARGV[3])
  return 'denied'
end
return 'ignored'
