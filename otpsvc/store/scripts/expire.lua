-- Tell that a watched verification expired pending (run by the event workers, once it is due).
-- KEYS[1]  the verification record (gone once expired)
-- ARGV[1]  the verification id            ARGV[2]  now, ms
-- ARGV[3]  max check attempts (when the record keeps none of its own, field 'ma')
-- KEYS and ARGV end with the event shard's (see _events.lua). The event is
-- verification.expired, or verification.max_attempts_reached for a verification whose last
-- attempt was taken by a check that never finished (its process died). ZREM decides which worker
-- tells it: each is told once.
-- Returns 1 when told, 0 when not (another worker told it, or a resend pushed its expiry back).
local ea = redis.call('HGET', KEYS[1], 'ea')
if ea and tonumber(ea) > tonumber(ARGV[2]) then
  -- A resend moved the expiry while its call was being placed: watch until then.
  if redis.call('ZSCORE', EV_EXPIRING, ARGV[1]) then
    ev_due(EV_EXPIRING, ea, ARGV[1])
  end
  return 0
end
if redis.call('ZREM', EV_EXPIRING, ARGV[1]) == 0 then
  return 0
end
redis.call('ZREM', EV_LADDER, ARGV[1])
local raw = redis.call('HGET', EV_SNAPSHOTS, ARGV[1])
redis.call('HDEL', EV_SNAPSHOTS, ARGV[1])
if not raw then
  return 0
end
local snap = cjson.decode(raw)
local event_type = 'verification.expired'
if tonumber(snap.a or 0) >= tonumber(snap.ma or ARGV[3]) then
  event_type = 'verification.max_attempts_reached'
end
if ev_wanted(snap.c) then
  ev_add(EV_ID, event_type, ARGV[1], snap, snap.ea)
end
return 1
