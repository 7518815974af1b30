-- Count one event (a call about to be placed, or a request) against several sliding-window
-- limits, all or nothing. Each window is a sorted set of the events of the last <window> ms, so
-- "N per hour" holds for any hour, not only for clock hours. The callers give every key of one
-- call the same hash tag, so the script runs on one Redis Cluster slot.
-- KEYS[1..g]  gates: while any of them exists, nothing is counted (the call kill switch)
-- KEYS[g+1..] one sorted set per window
-- ARGV[1]  now, ms          ARGV[2]  this event's unique member        ARGV[3]  g, the gate count
-- ARGV[4]  one "limit window_ms op" triple per window key, space separated, in KEYS order; op is
--          'h' (count the event) or 't' (only refuse when the window is full). One argument
--          instead of three per window keeps the client's encoding work small.
-- Returns {0} when allowed (and counted where asked); {i, 0} when gate KEYS[i] exists;
-- {i, ms until KEYS[i] has room} when its limit is reached. A refusal counts nothing anywhere.
local now, gates = tonumber(ARGV[1]), tonumber(ARGV[3])
for i = 1, gates do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    return {i, 0}
  end
end
local spec = {}
for word in string.gmatch(ARGV[4], '%S+') do
  spec[#spec + 1] = word
end
local function arg(i, n)
  return spec[3 * (i - gates - 1) + n]
end
for i = gates + 1, #KEYS do
  local limit, window = tonumber(arg(i, 1)), tonumber(arg(i, 2))
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  if redis.call('ZCARD', KEYS[i]) >= limit then
    local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    return {i, tonumber(oldest[2]) + window - now}
  end
end
for i = gates + 1, #KEYS do
  if arg(i, 3) == 'h' then
    redis.call('ZADD', KEYS[i], now, ARGV[2])
    redis.call('PEXPIRE', KEYS[i], arg(i, 2))
  end
end
return {0}
