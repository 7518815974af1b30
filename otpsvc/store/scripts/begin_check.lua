-- Take one check attempt before the code is compared, so attempts cannot be raced past the cap.
-- KEYS[1]  the verification record
-- ARGV[1]  now, ms        ARGV[2]  the calling client      ARGV[3]  max check attempts
-- ARGV[4]  length of the submitted code
-- ARGV[5]  key prefix of the per-number failure counters (same hash tag); the counter is
--          ARGV[5] .. <the record's phone key>, and counts every attempt taken here
-- ARGV[6]  how long a number's failure count lives, ms
-- Returns {outcome, hash, gen, attempts, expires_at, code length, provider}; outcome is one of
--   verify (an attempt was taken; compare the code) | not_found | locked | no_code | bad_length
-- A keypress-mode verification has no code: checking one is not_found.
local f = redis.call('HMGET', KEYS[1], 'c', 'st', 'ea', 'a', 'h', 'g', 'len', 'm', 'pk', 'p')
if f[1] ~= ARGV[2] or f[2] ~= 'pending' or tonumber(f[3]) <= tonumber(ARGV[1]) or f[8] == 'k' then
  return {'not_found', '', 0, 0, 0, 0}
end
local attempts, gen, expires, length = tonumber(f[4]), tonumber(f[6]), tonumber(f[3]), tonumber(f[7])
if attempts >= tonumber(ARGV[3]) then
  return {'locked', '', gen, attempts, expires, length}
end
if length ~= tonumber(ARGV[4]) then
  return {'bad_length', '', gen, attempts, expires, length}
end
if not f[5] then
  -- A resend is in flight: no code is valid, and nothing can be guessed.
  return {'no_code', '', gen, attempts, expires, length}
end
attempts = redis.call('HINCRBY', KEYS[1], 'a', 1)
-- Counted as a failure until approve hands it back: a new code never resets this count.
local failures = ARGV[5] .. f[9]
if redis.call('INCR', failures) == 1 then
  redis.call('PEXPIRE', failures, ARGV[6])
end
return {'verify', f[5], gen, attempts, expires, length, f[10] or ''}
