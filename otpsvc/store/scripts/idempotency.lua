-- Claim, finish or release one Idempotency-Key of one API client (draft-ietf-httpapi-idempotency-
-- key-header). The whole state is one hash under one key, so every call touches one slot.
-- KEYS[1]  the key's record: fp (fingerprint of the request body), st ('running:<token>' or
--          'done'), code (HTTP status), body and hdr (headers, JSON) of the first answer
-- ARGV[1]  'claim' | 'finish' | 'release'
-- claim:   ARGV[2] fingerprint, ARGV[3] token, ARGV[4] lease while running, ms
--          -> {'go'} | {'reused'} | {'running'} | {'done', status, body, headers}
-- finish:  ARGV[2] token, ARGV[3] status, ARGV[4] body, ARGV[5] how long it is kept, ms,
--          ARGV[6] headers
-- release: ARGV[2] token
--          finish and release act only while this request's claim holds -> 1 | 0
local op = ARGV[1]
if op == 'claim' then
  local f = redis.call('HMGET', KEYS[1], 'fp', 'st', 'code', 'body', 'hdr')
  if not f[1] then
    redis.call('HSET', KEYS[1], 'fp', ARGV[2], 'st', 'running:' .. ARGV[3])
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
    return {'go'}
  end
  if f[1] ~= ARGV[2] then
    return {'reused'}
  end
  if f[2] ~= 'done' then
    return {'running'}
  end
  return {'done', f[3], f[4], f[5]}
end
if redis.call('HGET', KEYS[1], 'st') ~= 'running:' .. ARGV[2] then
  return 0
end
if op == 'finish' then
  redis.call('HSET', KEYS[1], 'st', 'done', 'code', ARGV[3], 'body', ARGV[4], 'hdr', ARGV[6])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return 1
end
redis.call('DEL', KEYS[1])
return 1
