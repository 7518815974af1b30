-- Apply the keys a person pressed on a keypress- or match-mode call. Keypress mode: 1 approves.
-- Match mode: the two digits the app's screen shows approve (the caller compared them with the
-- record's keyed hash, ARGV[8]); other digits are a failed attempt. Either mode: 9 denies and
-- blocks the number for the client whose call it was. A code-mode verification is never
-- approved here.
-- KEYS[1]  the verification record
-- KEYS[2]  the record's client's deny block of the number (same hash tag)
-- KEYS[3]  the number's denials: a sorted set of clients by the time of their denial (same tag)
-- ARGV[1]  the key pressed (match mode: the digits keyed)      ARGV[2]  now, ms
-- ARGV[3]  how long a denial blocks new starts for the number, ms
-- ARGV[4]  the send the key press is about ('' when the callback does not say: the current one)
-- ARGV[5]  the provider the callback came from: it must be the one that took the send's call
-- ARGV[6]  the provider's message id of the call ('' for a callback bound by its token)
-- ARGV[7]  the id of the secret that made the callback's token ('' for a callback bound by the
--          message id): it must be the secret the send was made under (field 'k')
-- ARGV[8]  match mode: 'match' or 'wrong', the digits compared with the hash ARGV[9] ('' for 9
--          or in keypress mode)
-- ARGV[9]  match mode: the hash the digits were compared with; it must still be the record's
--          (field 'h'), or the press is about digits a resend has replaced
-- ARGV[10] max attempts, for a record that keeps none of its own (field 'ma')
-- One key press is accepted per send (field 'kg' holds the send that had it): a replayed or
-- later report for the same send, or one about an older send, changes nothing. A key other than
-- those leaves the person free to press again. Field 'ke' keeps how the call was answered:
-- 'c' confirmed, 'm' matched, 'w' wrong digits, 'd' denied.
-- KEYS and ARGV end with the event shard's (see _events.lua): verification.approved or .denied.
-- Returns 'approved' | 'denied' | 'wrong' | 'locked' | 'ignored'
local f = redis.call('HMGET', KEYS[1], 'm', 'st', 'ea', 'g', 'kg', 'c', 'p', 'mid', 'k', 'h',
  'a', 'ma')
local mode = f[1]
if (mode ~= 'k' and mode ~= 'n') or f[2] ~= 'pending' or tonumber(f[3]) <= tonumber(ARGV[2]) then
  return 'ignored'
end
if (ARGV[4] ~= '' and tonumber(ARGV[4]) ~= tonumber(f[4])) or f[5] == f[4] then
  return 'ignored'
end
if f[7] ~= ARGV[5] then
  return 'ignored'
end
if ARGV[7] ~= '' then
  if f[9] and f[9] ~= ARGV[7] then
    return 'ignored'
  end
elseif ARGV[6] == '' or ARGV[6] ~= f[8] then
  return 'ignored'
end
if ARGV[1] == '9' then
  redis.call('HSET', KEYS[1], 'kg', f[4], 'st', 'denied', 'fa', ARGV[2], 'ke', 'd')
  redis.call('SET', KEYS[2], 1, 'PX', ARGV[3])
  redis.call('ZADD', KEYS[3], ARGV[2], f[6])
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
  ev_emit(KEYS[1], 'verification.denied', ARGV[2], true)
  return 'denied'
end
if mode == 'k' then
  if ARGV[1] ~= '1' then
    return 'ignored'
  end
  redis.call('HSET', KEYS[1], 'kg', f[4], 'st', 'approved', 'fa', ARGV[2], 'ke', 'c')
  ev_emit(KEYS[1], 'verification.approved', ARGV[2], true)
  return 'approved'
end
-- Match mode: digits compared with the hash still in force, within the attempts.
if ARGV[8] == '' or not f[10] or f[10] ~= ARGV[9] then
  return 'ignored'
end
if tonumber(f[11] or 0) >= tonumber(f[12] or ARGV[10]) then
  return 'locked'
end
if ARGV[8] == 'match' then
  redis.call('HSET', KEYS[1], 'kg', f[4], 'st', 'approved', 'fa', ARGV[2], 'ke', 'm')
  ev_emit(KEYS[1], 'verification.approved', ARGV[2], true)
  return 'approved'
end
-- Wrong digits: an attempt, and this send's key press is spent (one guess per call).
redis.call('HINCRBY', KEYS[1], 'a', 1)
redis.call('HSET', KEYS[1], 'kg', f[4], 'ke', 'w')
ev_refresh(KEYS[1])
return 'wrong'
