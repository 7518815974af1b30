-- Reserve one send: open a new verification, or take the client's open one for this phone (a resend).
-- Every key is declared here and shares the phone's hash tag: one Redis Cluster slot, by the rules.
-- KEYS[1]  the client's open-verification index for this phone, whatever the mode: one cooldown and
--          one send count per client and number (behind a gateway, per client, person and number:
--          one person's start never resends, or learns the id of, another's); its value is a
--          verification id
-- KEYS[2]  the record of the verification the caller read in KEYS[1] (ARGV[10]); when there was
--          none, the candidate's record again
-- KEYS[3]  the record of the candidate new verification (id ARGV[2])
-- KEYS[4]  this client's deny block of the number, set when the person pressed "it was not me"
--          on this client's call
-- KEYS[5]  this client's failed checks of the number over the last day
-- KEYS[6]  every client's failed checks of the number over the last day
-- KEYS[7]  the number's slow-down gate: until the time it holds (ms), a number over the
--          all-clients failure cap gets no call (one call per period, whichever client asks)
-- KEYS[8]  the number's denials: a sorted set of the clients whose call the person denied, by
--          the time of the denial (ms); denials through ARGV[12] clients block every client
-- ARGV[1]  now, ms                        ARGV[2]  candidate id
-- ARGV[3]  code lifetime, ms              ARGV[4]  max sends per verification
-- ARGV[5]  base resend cooldown, ms; it doubles after every send
-- ARGV[6]  max check attempts             ARGV[7]  max failed checks per number and client per day
-- ARGV[8]  max failed checks per number per day, all clients together
-- ARGV[9]  slow-down period, ms          ARGV[10] the open id the caller read ('' for none)
-- ARGV[11] how long a denial blocks, ms   ARGV[12] clients whose denials block every client
-- ARGV[13] the mode asked for: 'k' (keypress), 'n' (match) or '' (code)
-- ARGV[14] the id of the secret this send's callback tokens are made with (field 'k')
-- ARGV[15] an escalation ladder's step this send is ('' for a start by the app): only a resend of
--          the open verification ARGV[10] while it is pending, and each step once (field 'lt';
--          'lp' marks the send whose call was about to be placed)
-- ARGV[16..] field, value pairs of a new record (client, phone key, masked phone, length, locale...)
-- Returns {outcome, id, field, value, ...}: the record's fields after this script; outcome is one of
--   new | resend | locked (attempts used up) | max_sends | cooldown | blocked (by this client's
--   denial) | blocked_all (by denials through several clients) | failures | slowed
--   (for the last four the record is just {'until', <ms>}) | retry (KEYS[1] changed since the
--   caller read it: read again and call again) | ended (a ladder step for a verification that
--   is no longer pending) | taken (a ladder step another worker already took)
-- A start in the other mode than the open verification's ends that one (canceled) and opens a
-- new one that keeps its send count and cooldown.
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[3])
local cooldown = tonumber(ARGV[5])

local open_id = redis.call('GET', KEYS[1])
local step = ARGV[15]
if step ~= '' and (open_id or '') ~= ARGV[10] then
  return {'ended', ''}
end
if (open_id or '') ~= ARGV[10] then
  return {'retry', ''}
end

local blocked_for = redis.call('PTTL', KEYS[4])
if blocked_for > 0 then
  return {'blocked', '', 'until', now + blocked_for}
end

-- One client's call denied blocks that client only: a hostile client's call must not lock the
-- person out of every app. Denials through several clients block them all.
local deny_ms, deny_clients = tonumber(ARGV[11]), tonumber(ARGV[12])
redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', now - deny_ms)
if redis.call('ZCARD', KEYS[8]) >= deny_clients then
  local nth = redis.call('ZREVRANGE', KEYS[8], deny_clients - 1, deny_clients - 1, 'WITHSCORES')
  return {'blocked_all', '', 'until', tonumber(nth[2]) + deny_ms}
end

local failures = tonumber(redis.call('GET', KEYS[5]) or '0')
if failures >= tonumber(ARGV[7]) then
  return {'failures', '', 'until', now + redis.call('PTTL', KEYS[5])}
end

-- Many wrong codes across clients slow the number down instead of locking it out: one client
-- must not be able to deny another client's users their calls.
local slow = tonumber(redis.call('GET', KEYS[6]) or '0') >= tonumber(ARGV[8])
if slow then
  local gate = tonumber(redis.call('GET', KEYS[7]) or '0')
  if gate > now then
    return {'slowed', '', 'until', gate}
  end
end

-- The send cap and the cooldown of an open or canceled verification: the refusal, or nil.
local function send_refused(id, rec, f)
  if tonumber(f[3]) >= tonumber(ARGV[4]) then
    return {'max_sends', id, unpack(redis.call('HGETALL', rec))}
  end
  if now < tonumber(f[6]) then
    return {'cooldown', id, unpack(redis.call('HGETALL', rec))}
  end
  return nil
end

local sends_before = 0
if open_id then
  local rec = KEYS[2]
  local f = redis.call('HMGET', rec, 'st', 'ea', 's', 'a', 'g', 'ra', 'm', 'ma')
  local live = f[2] and tonumber(f[2]) > now
  local same_mode = (f[7] or '') == ARGV[13]
  if step ~= '' then
    if f[1] ~= 'pending' or not live then
      return {'ended', open_id}
    end
    if tonumber(redis.call('HGET', rec, 'lt') or '-1') >= tonumber(step) then
      -- Taken by a worker that died. Its call may have gone out once the send was marked
      -- placing ('lp' = the send): then never again. Before that it surely did not: take it.
      if redis.call('HGET', rec, 'lp') == f[5] then
        return {'taken', open_id}
      end
    end
  end
  if f[1] == 'pending' and live then
    -- Attempts used up, the send cap or the cooldown hold in either mode.
    if tonumber(f[4]) >= tonumber(f[8] or ARGV[6]) then
      return {'locked', open_id, unpack(redis.call('HGETALL', rec))}
    end
    local refusal = send_refused(open_id, rec, f)
    if refusal then
      return refusal
    end
  end
  if f[1] == 'pending' and live and not same_mode then
    -- The other mode: a new verification, which keeps the open one's send count.
    redis.call('HDEL', rec, 'h')
    redis.call('HSET', rec, 'st', 'canceled', 'fa', now)
    sends_before = tonumber(f[3])
  elseif f[1] == 'pending' and live then
    local sends, gen = tonumber(f[3]) + 1, tonumber(f[5]) + 1
    local expires = now + ttl
    local resend_at = now + cooldown * 2 ^ (sends - 1)
    if step ~= '' and ARGV[13] == 'n' then
      -- A ladder's call in match mode asks for the digits the app's screen already shows.
      redis.call('HDEL', rec, 'mid')
    else
      -- The old code dies here: until finalize stores the new hash, no code is valid.
      redis.call('HDEL', rec, 'h', 'mid')
    end
    redis.call('HSET', rec, 'g', gen, 's', sends, 'ea', expires, 'ra', resend_at, 'ds', 'sending',
      'k', ARGV[14])
    if step ~= '' then
      redis.call('HSET', rec, 'lt', step)
    else
      -- The app asked again: its ladder starts over from this call.
      redis.call('HDEL', rec, 'lt', 'lr')
    end
    redis.call('PEXPIRE', rec, ttl)
    redis.call('PEXPIRE', KEYS[1], ttl)
    if slow then
      redis.call('SET', KEYS[7], now + tonumber(ARGV[9]), 'PX', ARGV[9])
    end
    return {'resend', open_id, unpack(redis.call('HGETALL', rec))}
  elseif f[1] == 'canceled' and live then
    -- A cancel kills the code, not the cooldown or the send cap of this client and number:
    -- start, cancel, start again must not ring the phone more often than resends would.
    local refusal = send_refused(open_id, rec, f)
    if refusal then
      return refusal
    end
    sends_before = tonumber(f[3])
  end
end

if step ~= '' then
  return {'ended', ''}
end
local expires = now + ttl
local resend_at = now + cooldown * 2 ^ sends_before
redis.call('HSET', KEYS[3], 'st', 'pending', 'a', 0, 's', sends_before + 1, 'g', 1, 'ca', now,
  'ea', expires, 'ra', resend_at, 'ds', 'sending', 'k', ARGV[14], unpack(ARGV, 16))
redis.call('PEXPIRE', KEYS[3], ttl)
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
if slow then
  redis.call('SET', KEYS[7], now + tonumber(ARGV[9]), 'PX', ARGV[9])
end
return {'new', ARGV[2], unpack(redis.call('HGETALL', KEYS[3]))}
