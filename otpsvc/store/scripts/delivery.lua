-- Record what a provider reported about a call. Idempotent; older or out-of-order reports lose.
-- KEYS[1]  the verification record
-- ARGV[1]  the provider's message id for the call ('' when the callback names the verification)
-- ARGV[2]  delivery status: initiated | ringing | in-progress | completed | no-answer | busy | failed
-- ARGV[3]  now, ms
-- ARGV[4]  the send the report is about ('' when the callback does not say): another send's
--          report is ignored
-- ARGV[5]  the provider the report came from: a report about another provider's call is ignored
-- ARGV[6]  the id of the secret that made the callback's token ('' for a report found by message
--          id): a token of another secret than the send's (field 'k') is ignored
-- KEYS and ARGV end with the event shard's (see _events.lua): an applied report sends
-- delivery.updated.
-- Returns 'applied' | 'ignored' (a report of an older send, or no newer than what is known) | 'gone'
local rank = {initiated = 1, ringing = 2, ['in-progress'] = 3,
  completed = 4, ['no-answer'] = 4, busy = 4, failed = 4}
local f = redis.call('HMGET', KEYS[1], 'mid', 'ds', 'st', 'g', 'c', 'p', 'k')
if not f[3] then
  return 'gone'
end
if ARGV[4] ~= '' and tonumber(ARGV[4]) ~= tonumber(f[4]) then
  return 'ignored'
end
if ARGV[1] ~= '' and f[1] ~= ARGV[1] then
  return 'ignored'
end
-- Until the provider is recorded (a report racing the call's own answer), the token or the
-- message id binds the report to the send.
if f[6] and f[6] ~= ARGV[5] then
  return 'ignored'
end
if ARGV[6] ~= '' and f[7] and f[7] ~= ARGV[6] then
  return 'ignored'
end
local new_rank = rank[ARGV[2]]
local old_rank = rank[f[2]] or 0
if not new_rank or new_rank <= old_rank then
  return 'ignored'
end
redis.call('HSET', KEYS[1], 'ds', ARGV[2])
if old_rank < 3 and (ARGV[2] == 'in-progress' or ARGV[2] == 'completed') then
  -- Picked up (or, for an SMS, delivered): counted once per send.
  in_add(KEYS[1], 'a', ARGV[3], 0)
end
if ARGV[2] == 'no-answer' or ARGV[2] == 'busy' or ARGV[2] == 'failed' then
  -- Nobody heard the code: the person may ask for a new call at once, and the next step of an
  -- escalation ladder is due now.
  redis.call('HSET', KEYS[1], 'ra', ARGV[3])
  local vid = ev_vid(KEYS[1])
  if redis.call('ZSCORE', EV_LADDER, vid) then
    ev_due(EV_LADDER, ARGV[3], vid)
    redis.call('HSET', KEYS[1], 'lr', ARGV[2])
  end
end
ev_emit(KEYS[1], 'delivery.updated', ARGV[3], false)
ev_refresh(KEYS[1])
return 'applied'
