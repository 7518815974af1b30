-- Claim, finish or release one Idempotency-Key of one API client (draft-ietf-httpapi-idempotency-
-- key-header). The key's state is one hash; the client's index of its kept keys shares its slot.
-- KEYS[1]  the key's record: fp (fingerprint of the request body), st ('running:<token>' or
--          'done'), code (HTTP status), body and hdr (headers, JSON) of the first answer
-- KEYS[2]  the client's index: a sorted set of its records by the time each one ends (ms), which
--          caps how many records one client can keep
-- ARGV[1]  'claim' | 'finish' | 'release'       ARGV[2]  now, ms
-- claim:   ARGV[3] fingerprint, ARGV[4] token, ARGV[5] lease while running, ms, ARGV[6] the most
--          records one client may hold
--          -> {'go'} | {'reused'} | {'running'} | {'done', status, body, headers} |
--             {'full', ms until the oldest record ends}
-- finish:  ARGV[3] token, ARGV[4] status, ARGV[5] body, ARGV[6] how long it is kept, ms,
--          ARGV[7] headers
-- release: ARGV[3] token
--          finish and release act only while this request's claim holds -> 1 | 0
local op, now = ARGV[1], tonumber(ARGV[2])
if op == 'claim' then
  local f = redis.call('HMGET', KEYS[1], 'fp', 'st', 'code', 'body', 'hdr')
  if not f[1] then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
    if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[6]) then
      local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
      return {'full', tonumber(oldest[2]) - now}
    end
    redis.call('HSET', KEYS[1], 'fp', ARGV[3], 'st', 'running:' .. ARGV[4])
    redis.call('PEXPIRE', KEYS[1], ARGV[5])
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), KEYS[1])
    if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[5]) then
      redis.call('PEXPIRE', KEYS[2], ARGV[5])
    end
    return {'go'}
  end
  if f[1] ~= ARGV[3] then
    return {'reused'}
  end
  if f[2] ~= 'done' then
    return {'running'}
  end
  return {'done', f[3], f[4], f[5]}
end
if redis.call('HGET', KEYS[1], 'st') ~= 'running:' .. ARGV[3] then
  return 0
end
if op == 'finish' then
  redis.call('HSET', KEYS[1], 'st', 'done', 'code', ARGV[4], 'body', ARGV[5], 'hdr', ARGV[7])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), KEYS[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
  return 1
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
return 1
