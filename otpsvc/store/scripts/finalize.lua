-- Record the outcome of placing the call for one send.
-- KEYS[1]  the verification record
-- ARGV[1]  the send's generation (from reserve); a newer send wins and this one is dropped
-- ARGV[2]  'accepted' (a provider took the call) or 'failed' (none did)
-- ARGV[3]  argon2 verifier of the code (only with 'accepted'; '' in keypress mode)
-- ARGV[4]  provider name                  ARGV[5]  provider message id ('' if none)
-- ARGV[6]  delivery status                ARGV[7]  now, ms
-- KEYS and ARGV end with the event shard's (see _events.lua): a failed call sends
-- verification.delivery_failed; an accepted one starts watching the verification's expiry.
-- Returns 'ok' | 'failed' | 'superseded' | 'gone'
local f = redis.call('HMGET', KEYS[1], 'st', 'g', 's')
if not f[1] then
  return 'gone'
end
if f[1] ~= 'pending' or tonumber(f[2]) ~= tonumber(ARGV[1]) then
  return 'superseded'
end
if ARGV[2] == 'failed' then
  if tonumber(f[3]) == 1 then
    -- A new verification whose first call failed is dead; the next start opens a new one.
    redis.call('HSET', KEYS[1], 'st', 'failed', 'ds', 'failed', 'p', ARGV[4])
    ev_emit(KEYS[1], 'verification.delivery_failed', ARGV[7], true)
  else
    -- A failed resend keeps the verification (and its attempt count) and lifts the cooldown.
    redis.call('HSET', KEYS[1], 'ds', 'failed', 'p', ARGV[4], 'ra', ARGV[7])
    ev_emit(KEYS[1], 'verification.delivery_failed', ARGV[7], false)
    ev_refresh(KEYS[1])
  end
  return 'failed'
end
redis.call('HSET', KEYS[1], 'p', ARGV[4], 'ds', ARGV[6])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'h', ARGV[3])
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'mid', ARGV[5])
end
ev_watch(KEYS[1])
return 'ok'
