-- Take a due escalation step (run by the workers): whichever worker gets it holds it for a lease;
-- one that dies with it leaves it due again when the lease ends (the step itself is placed once:
-- reserve.lua marks it taken).
-- KEYS[1]  the verification record
-- ARGV[1]  the verification id      ARGV[2]  now, ms       ARGV[3]  the lease, ms
-- KEYS and ARGV end with the event shard's (see _events.lua).
-- Returns {} when nothing is due (another worker holds it, or the verification ended), else
-- {ladder, current step, sealed number, client, mode, locale, why, owner ('' but behind a
-- gateway: whose verification it is, see reserve.lua's KEYS[1]), the number's key it was
-- started under (its keys stay in that slot, whatever secret is current now), the brand the start
-- named ('' for the client's), the sealed person it was started for ('' for none)}
local due = redis.call('ZSCORE', EV_LADDER, ARGV[1])
if not due or tonumber(due) > tonumber(ARGV[2]) then
  return {}
end
local f = redis.call('HMGET', KEYS[1], 'st', 'ea', 'ld', 'li', 'pe', 'c', 'm', 'loc', 'lr', 'ow', 'pk', 'br', 'pp')
if f[1] ~= 'pending' or not f[3] or not f[5] or tonumber(f[2]) <= tonumber(ARGV[2]) then
  redis.call('ZREM', EV_LADDER, ARGV[1])
  return {}
end
ev_due(EV_LADDER, tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
return {f[3], f[4] or '-1', f[5], f[6], f[7] or '', f[8], f[9] or 'timeout', f[10] or '', f[11], f[12] or '', f[13] or ''}
