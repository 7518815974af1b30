-- Count one event (a call about to be placed, or a request) against several sliding-window
-- limits, all or nothing. Each window is a sorted set of the events of the last <window> ms, so
-- "N per hour" holds for any hour, not only for clock hours. The callers give every key of one
-- call the same hash tag, so the script runs on one Redis Cluster slot.
-- KEYS[1..g]  gates: while any of them exists, nothing is counted (the call kill switch)
-- KEYS[g+1..] one sorted set per window; then, with ARGV[7], the client's end users of the hour
--             (a HyperLogLog); then, with ARGV[5], the data's epoch marker
-- ARGV[1]  now, ms          ARGV[2]  this event's unique member        ARGV[3]  g, the gate count
-- ARGV[4]  one "limit window_ms op" triple per window key, space separated, in KEYS order; op is
--          'h' (count the event), 'p' (count it in a window of one end user's: see ARGV[7]) or
--          't' (only refuse when the window is full); or, for a budget in money, 'm': the key
--          is a calendar period's total (a string of micro-units), "limit" is "limit:price",
--          window_ms the time until the period ends. One argument instead of three per window
--          keeps the client's encoding work small.
-- ARGV[5]  optional: the epoch marker's value the caller saw while calls were suspended. When
--          the marker no longer holds it (Redis lost its data), the suspension ARGV[6] is set
--          again in KEYS[1] and the call refused as by that gate: a restart of Redis must not
--          lift a suspension under a process that saw it.
-- ARGV[7]  optional: how many end users one client's windows may be kept for in an hour, and
-- ARGV[8]  this end user's name. An end user none of whose 'p' windows exists yet is new: past
--          the cap (the HyperLogLog's count), the request is refused until the next hour, so
--          one client inventing addresses cannot fill Redis with their windows.
-- ARGV[9]  optional: "<f> <mode> <client>": the last f gates are the conversion rule's (see
--          otpsvc/store/conversion.py), the number's safe-list entry first, then the suspensions
--          that apply to this send. A suspension that exists, not naming the client among its
--          exempt, refuses in mode 'e' (enforce) like a gate, with the ms until it ends; in mode
--          'm' (monitor) it refuses nothing, and the reply says which it was. None applies to a
--          number on the safe list.
-- Returns {0} when allowed (and counted where asked), {0, i} when allowed while the rule's
-- gate KEYS[i] would have refused; {i, 0} when gate KEYS[i] exists (a suspension: {i, ms left});
-- {i, ms until KEYS[i] has room} when its limit is reached; {i, ms until the next hour, 1} when
-- KEYS[i] is a new end user's window past the cap. A refusal counts nothing anywhere.
local now, gates = tonumber(ARGV[1]), tonumber(ARGV[3])
local last = #KEYS
if ARGV[5] and ARGV[5] ~= '' then
  last = last - 1
  if redis.call('GET', KEYS[last + 1]) ~= ARGV[5] then
    redis.call('SET', KEYS[1], ARGV[6], 'NX')
    return {1, 0}
  end
end
local persons
if ARGV[7] and ARGV[7] ~= '' then
  persons = KEYS[last]
  last = last - 1
end
local rule, watched = 0, nil
local rule_mode, rule_client
if ARGV[9] and ARGV[9] ~= '' then
  local f
  f, rule_mode, rule_client = string.match(ARGV[9], '^(%d+) (%a) (%S*)$')
  rule = tonumber(f)
end
for i = 1, gates - rule do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    return {i, 0}
  end
end
if rule > 0 and redis.call('EXISTS', KEYS[gates - rule + 1]) == 0 then
  for i = gates - rule + 2, gates do
    local held = redis.call('GET', KEYS[i])
    held = held and cjson.decode(held)
    -- In force until its 'until' on the service's clock (the key itself outlives it a little).
    if held and tonumber(held['until']) > now
        and not string.find(held.exempt or '', ',' .. rule_client .. ',', 1, true) then
      if rule_mode == 'e' then
        return {i, tonumber(held['until']) - now}
      end
      watched = watched or i
    end
  end
end
local spec = {}
for word in string.gmatch(ARGV[4], '%S+') do
  spec[#spec + 1] = word
end
local function arg(i, n)
  return spec[3 * (i - gates - 1) + n]
end
local new_person, first_personal = persons ~= nil, nil
for i = gates + 1, last do
  if arg(i, 3) == 'm' then
    local limit, price = string.match(arg(i, 1), '^(%d+):(%d+)$')
    if tonumber(redis.call('GET', KEYS[i]) or '0') + tonumber(price) > tonumber(limit) then
      return {i, tonumber(arg(i, 2))}
    end
  else
    local limit, window = tonumber(arg(i, 1)), tonumber(arg(i, 2))
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
    if arg(i, 3) == 'p' then
      first_personal = first_personal or i
      if redis.call('EXISTS', KEYS[i]) == 1 then
        new_person = false
      end
    end
    if redis.call('ZCARD', KEYS[i]) >= limit then
      local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
      return {i, tonumber(oldest[2]) + window - now}
    end
  end
end
if new_person and first_personal then
  if redis.call('PFCOUNT', persons) >= tonumber(ARGV[7]) then
    return {first_personal, 3600000 - now % 3600000, 1}
  end
  redis.call('PFADD', persons, ARGV[8])
  redis.call('PEXPIRE', persons, 7200000)
end
for i = gates + 1, last do
  if arg(i, 3) == 'm' then
    redis.call('INCRBY', KEYS[i], string.match(arg(i, 1), ':(%d+)$'))
    redis.call('PEXPIRE', KEYS[i], tonumber(arg(i, 2)) + 3600000)
  elseif arg(i, 3) ~= 't' then
    redis.call('ZADD', KEYS[i], now, ARGV[2])
    redis.call('PEXPIRE', KEYS[i], arg(i, 2))
  end
end
if watched then
  return {0, watched}
end
return {0}
