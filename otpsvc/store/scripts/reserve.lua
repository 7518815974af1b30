-- Reserve one send: open a new verification, or take the client's open one for this phone (a resend).
-- Every key shares the phone's hash tag, so the script runs on one Redis Cluster slot.
-- KEYS[1]  the client's open-verification index for this phone; its value is a verification id
-- KEYS[2]  the record of the candidate new verification (ARGV[3] .. ARGV[2])
-- KEYS[3]  the number's deny block, set when the person pressed "it was not me"
-- KEYS[4]  the number's failed checks of the last day, across all its verifications
-- ARGV[1]  now, ms                        ARGV[2]  candidate id
-- ARGV[3]  record key prefix: the open verification's record is ARGV[3] .. <its id>, same tag
-- ARGV[4]  code lifetime, ms              ARGV[5]  max sends per verification
-- ARGV[6]  base resend cooldown, ms; it doubles after every send
-- ARGV[7]  max check attempts            ARGV[8]  max failed checks per number per day
-- ARGV[9..] field, value pairs of a new record (client, phone key, masked phone, length, locale...)
-- Returns {outcome, id, field, value, ...}: the record's fields after this script; outcome is one of
--   new | resend | locked (attempts used up) | max_sends | cooldown | blocked | failures (for the
--   last two the record is just {'until', <ms>})
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[4])
local cooldown = tonumber(ARGV[6])

local blocked_for = redis.call('PTTL', KEYS[3])
if blocked_for > 0 then
  return {'blocked', '', 'until', now + blocked_for}
end

local failures = tonumber(redis.call('GET', KEYS[4]) or '0')
if failures >= tonumber(ARGV[8]) then
  return {'failures', '', 'until', now + redis.call('PTTL', KEYS[4])}
end

local open_id = redis.call('GET', KEYS[1])
if open_id then
  local rec = ARGV[3] .. open_id
  local f = redis.call('HMGET', rec, 'st', 'ea', 's', 'a', 'g', 'ra')
  if f[1] == 'pending' and tonumber(f[2]) > now then
    local sends, attempts, gen = tonumber(f[3]), tonumber(f[4]), tonumber(f[5])
    if attempts >= tonumber(ARGV[7]) then
      return {'locked', open_id, unpack(redis.call('HGETALL', rec))}
    end
    if sends >= tonumber(ARGV[5]) then
      return {'max_sends', open_id, unpack(redis.call('HGETALL', rec))}
    end
    if now < tonumber(f[6]) then
      return {'cooldown', open_id, unpack(redis.call('HGETALL', rec))}
    end
    gen = gen + 1
    sends = sends + 1
    local expires = now + ttl
    local resend_at = now + cooldown * 2 ^ (sends - 1)
    -- The old code dies here: until finalize stores the new hash, no code is valid.
    redis.call('HDEL', rec, 'h', 'mid')
    redis.call('HSET', rec, 'g', gen, 's', sends, 'ea', expires, 'ra', resend_at, 'ds', 'sending')
    redis.call('PEXPIRE', rec, ttl)
    redis.call('PEXPIRE', KEYS[1], ttl)
    return {'resend', open_id, unpack(redis.call('HGETALL', rec))}
  end
end

local expires = now + ttl
local resend_at = now + cooldown
redis.call('HSET', KEYS[2], 'st', 'pending', 'a', 0, 's', 1, 'g', 1, 'ca', now, 'ea', expires,
  'ra', resend_at, 'ds', 'sending', unpack(ARGV, 9))
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
return {'new', ARGV[2], unpack(redis.call('HGETALL', KEYS[2]))}
