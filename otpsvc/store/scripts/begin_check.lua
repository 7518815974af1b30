-- Take one check attempt before the code is compared, so attempts cannot be raced past the cap.
-- KEYS[1]  the verification record
-- ARGV[1]  now, ms        ARGV[2]  the calling client
-- ARGV[3]  max check attempts, for a record made before it kept its own (field 'ma')
-- ARGV[4]  length of the submitted code
-- The number's failure counters are counted by failure.lua once a code did not match (their
-- keys need the record's phone key, which this script returns).
-- Returns {outcome, hash, gen, attempts, expires_at, code length, provider, phone key, masked
-- number, max attempts, escalation step of the send ('' without a ladder)}; outcome
-- is one of
--   verify (an attempt was taken; compare the code) | not_found | locked | no_code | bad_length
-- A keypress- or match-mode verification has no code to check: checking one is not_found.
-- KEYS and ARGV end with the event shard's (see _events.lua): the attempt is kept in the watched
-- snapshot, so that a verification locked by a check whose process died before failure.lua ran
-- is told as verification.max_attempts_reached when it expires.
local f = redis.call('HMGET', KEYS[1], 'c', 'st', 'ea', 'a', 'h', 'g', 'len', 'm', 'pk', 'p', 'pm',
  'ma', 'li')
local max = tonumber(f[12] or ARGV[3])
if f[1] ~= ARGV[2] or f[2] ~= 'pending' or tonumber(f[3]) <= tonumber(ARGV[1]) or f[8] then
  return {'not_found', '', 0, 0, 0, 0}
end
local attempts, gen, expires, length = tonumber(f[4]), tonumber(f[6]), tonumber(f[3]), tonumber(f[7])
if attempts >= max then
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
ev_refresh(KEYS[1])
return {'verify', f[5], gen, attempts, expires, length, f[10] or '', f[9], f[11] or '', max,
  f[13] or ''}
