-- Record the outcome of placing the call for one send.
-- KEYS[1]  the verification record
-- ARGV[1]  the send's generation (from reserve); a newer send wins and this one is dropped
-- ARGV[2]  'accepted' (a provider took the call) or 'failed' (none did)
-- ARGV[3]  argon2 verifier of the code (only with 'accepted'; '' in keypress mode)
-- ARGV[4]  provider name                  ARGV[5]  provider message id ('' if none)
-- ARGV[6]  delivery status                ARGV[7]  now, ms
-- ARGV[8]  the escalation ladder's step this send is ('' without a ladder, 0 for the first): an
--          accepted one is kept in the history ('lh', 'li'), the next step is due after this
--          one's wait, and a later step tells verification.escalated (from, to, why)
-- ARGV[9]  what an accepted send cost (micro-units of the currency; '' without a price file):
--          added to the record's total ('co'), and for a ladder's step kept with it ('lc')
-- ARGV[10] what the provider reported the send cost, "<micro-units> <currency>" ('' when it
--          reports nothing): added to the record's reported total ('rp', currency 'rc'), kept
--          for reconciliation with the price file's quote
-- ARGV[11] the conversion rule's suspension monitor mode let this send through, "<rule>
--          <channel> <destination>" ('' for none): an accepted send tells fraud.would_block
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
  if tonumber(f[2]) == 1 then
    -- A verification begun whose first send failed still counts in the funnel.
    in_add(KEYS[1], 'f', ARGV[7], 0, ARGV[4], ARGV[8] ~= '' and ARGV[8] or nil)
  end
  if tonumber(f[3]) == 1 then
    -- A new verification whose first call failed is dead; the next start opens a new one.
    redis.call('HSET', KEYS[1], 'st', 'failed', 'ds', 'failed', 'p', ARGV[4])
    ev_emit(KEYS[1], 'verification.delivery_failed', ARGV[7], true)
  else
    -- A failed resend keeps the verification (and its attempt count) and lifts the cooldown.
    redis.call('HSET', KEYS[1], 'ds', 'failed', 'p', ARGV[4], 'ra', ARGV[7])
    if redis.call('ZREM', EV_LADDER, ev_vid(KEYS[1])) == 1 then
      -- The route held every step left: no step follows.
      redis.call('HSET', KEYS[1], 'lx', 'delivery_failed')
    end
    ev_emit(KEYS[1], 'verification.delivery_failed', ARGV[7], false)
    ev_refresh(KEYS[1])
  end
  return 'failed'
end
-- What the funnel counts: a verification begun (its first send), a ladder's next step
-- reached, or a resend.
local counted = 's'
if tonumber(f[2]) == 1 then
  counted = 'v'
elseif ARGV[8] ~= ''
    and tonumber(ARGV[8]) > tonumber(redis.call('HGET', KEYS[1], 'li') or '-1') then
  counted = 'r'
end
redis.call('HSET', KEYS[1], 'p', ARGV[4], 'ds', ARGV[6])
in_add(KEYS[1], counted, ARGV[7], tonumber(ARGV[9]) or 0, ARGV[4],
  ARGV[8] ~= '' and ARGV[8] or nil)
if ARGV[9] ~= '' then
  redis.call('HINCRBY', KEYS[1], 'co', ARGV[9])
end
local reported, currency = string.match(ARGV[10], '^(%d+) (%u+)$')
if reported then
  redis.call('HINCRBY', KEYS[1], 'rp', reported)
  redis.call('HSET', KEYS[1], 'rc', currency)
end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'h', ARGV[3])
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'mid', ARGV[5])
end
local ladder = redis.call('HGET', KEYS[1], 'ld')
if ladder and ARGV[8] ~= '' then
  local steps, step = ladder_steps(ladder), tonumber(ARGV[8])
  local vid = ev_vid(KEYS[1])
  -- The calls placed, compact (a record's fields stay under 64 bytes, so Redis keeps the hash
  -- small): 'step.seconds after created[.why the next followed]', comma separated; why is
  -- n(o-answer), b(usy), f(ailed) or t(imeout).
  local f = redis.call('HMGET', KEYS[1], 'lh', 'li', 'ca')
  local history, was = f[1] or '', tonumber(f[2] or '-1')
  local escalated = history ~= '' and step > was
  local why
  if escalated then
    why = redis.call('HGET', KEYS[1], 'lr') or 'timeout'
    redis.call('HDEL', KEYS[1], 'lr')
    history = history .. '.' .. string.sub(why, 1, 1)
  end
  local entry = step .. '.' .. string.format('%d', (tonumber(ARGV[7]) - tonumber(f[3])) / 1000)
  history = history == '' and entry or history .. ',' .. entry
  redis.call('HSET', KEYS[1], 'li', step, 'lh', history)
  if ARGV[9] ~= '' then
    -- Each step's cost, in the order of the history.
    local costs = redis.call('HGET', KEYS[1], 'lc')
    redis.call('HSET', KEYS[1], 'lc', costs and costs .. ',' .. ARGV[9] or ARGV[9])
  end
  if step + 1 < #steps then
    ev_due(EV_LADDER, tonumber(ARGV[7]) + steps[step + 1][2] * 1000, vid)
  else
    -- The last step: the sealed number has no more use.
    redis.call('ZREM', EV_LADDER, vid)
    redis.call('HDEL', KEYS[1], 'pe', 'pp')
  end
  if escalated then
    local from = steps[was + 1] and steps[was + 1][1] or ''
    ev_emit(KEYS[1], 'verification.escalated', ARGV[7], false,
      {from = from, to = ARGV[4], why = why, step = step + 1})
  end
end
local rule, channel, destination = string.match(ARGV[11], '^(%S+) (%S+) (%S*)$')
if rule then
  -- A second event of this step: an id of its own.
  local snap = ev_snapshot(KEYS[1])
  if ev_wanted(snap.c) then
    ev_add(EV_ID .. 'w', 'fraud.would_block', ev_vid(KEYS[1]), snap, ARGV[7],
      {rule = rule, channel = channel, destination = destination})
  end
end
ev_watch(KEYS[1])
return 'ok'
