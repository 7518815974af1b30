-- The conversion rule (see otpsvc/store/conversion.py). Each send placed waits until its
-- verification is approved (the send converted) or the grace passes without an approval (it
-- did not); then it is counted, by the minute it was placed, in the window of its channel and
-- its destination (the number's prefix, and its country), per client. A destination whose
-- settled sends of the window reach the minimum while converting below the minimum share is
-- suspended: for that client, or, when two or more clients see it convert badly, for every
-- client but those whose own sends there convert. Suspensions lengthen on repeat.
-- Applying one shard's batch of outcome entries moves that shard's marker in the same step, so
-- a worker killed at any point, or two workers at once, apply each entry exactly once.
-- KEYS[1] the markers: shard tag -> the id of the last outcome entry applied
-- KEYS[2] the pending sends: verification id -> 'client|country|prefix|channel:ms,channel:ms'
-- KEYS[3] the sends waiting to settle: a sorted set of 'vid|channel|ms' by when the grace ends
-- KEYS[4] the windows: 'channel|target' ('p' and the prefix, or 'k' and the country) ->
--         'minute:client:settled:converted' entries, ';' separated
-- KEYS[5] the suspensions: 'scope|channel|target' ('c:<client>' or '*') -> JSON
-- ARGV[1] now, ms           ARGV[2] the grace, ms          ARGV[3] the window, ms
-- ARGV[4] the fewest settled sends the rule judges          ARGV[5] the least conversion share
-- ARGV[6] the suspensions' lengths by repeat, ms, comma separated
-- ARGV[7] how long after a suspension ended the next one is a repeat, ms
-- ARGV[8] how long the markers are kept, ms        ARGV[9] n, the shard batches
-- ARGV[10 .. 9+3n] (tag, marker the batch read after, the batch's last entry id) per batch
-- then one op each: '<batch> s <vid> <ms> <client> <channel> <prefix> <country>' (a send) or
-- '<batch> ok <vid> <ms>' (an approval)
-- Returns {each batch's shard marker after the call (its last entry when applied, the marker
-- found otherwise), the suspensions made in this call: {field, JSON, field, JSON, ...}}
local now, grace, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local min_sends, min_share = tonumber(ARGV[4]), tonumber(ARGV[5])
local lengths = {}
for n in string.gmatch(ARGV[6], '%d+') do
  lengths[#lengths + 1] = tonumber(n)
end
local repeat_ms, batches = tonumber(ARGV[7]), tonumber(ARGV[9])
-- An approval written just before its send's grace ended may be folded a moment later: sends
-- settle unconverted only this long after their grace.
local settle_before = now - 2000
local oldest_minute = math.floor((now - window) / 60000)

local applied, markers = {}, {}
for b = 1, batches do
  local at = 10 + 3 * (b - 1)
  markers[b] = redis.call('HGET', KEYS[1], ARGV[at]) or '0-0'
  if markers[b] == ARGV[at + 1] then
    applied[b] = true
    markers[b] = ARGV[at + 2]
    redis.call('HSET', KEYS[1], ARGV[at], ARGV[at + 2])
  end
end
if batches > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
end

local windows, touched = {}, {}
local function window_of(field)
  local rows = windows[field]
  if rows then
    return rows
  end
  rows = {}
  local held = redis.call('HGET', KEYS[4], field) or ''
  for m, c, s, k in string.gmatch(held, '(%d+):([^:;]*):(%d+):(%d+)') do
    if tonumber(m) > oldest_minute then
      rows[#rows + 1] = {tonumber(m), c, tonumber(s), tonumber(k)}
    end
  end
  windows[field] = rows
  touched[#touched + 1] = field
  return rows
end

local function count(client, field, ms, converted)
  local minute = math.floor(ms / 60000)
  local rows = window_of(field)
  if minute <= oldest_minute then
    return
  end
  for _, r in ipairs(rows) do
    if r[1] == minute and r[2] == client then
      r[3], r[4] = r[3] + 1, r[4] + converted
      return
    end
  end
  rows[#rows + 1] = {minute, client, 1, converted}
end

local function settle(held, channel, ms, converted)
  local client, country, prefix = string.match(held, '^([^|]*)|([^|]*)|([^|]*)|')
  count(client, channel .. '|p' .. prefix, ms, converted)
  count(client, channel .. '|k' .. country, ms, converted)
end

for i = 10 + 3 * batches, #ARGV do
  local op = {}
  for word in string.gmatch(ARGV[i], '%S+') do
    op[#op + 1] = word
  end
  if applied[tonumber(op[1])] then
    local vid = op[3]
    local held = redis.call('HGET', KEYS[2], vid)
    if op[2] == 's' then
      held = held or (op[5] .. '|' .. op[8] .. '|' .. op[7] .. '|')
      local sep = string.sub(held, -1) == '|' and '' or ','
      redis.call('HSET', KEYS[2], vid, held .. sep .. op[6] .. ':' .. op[4])
      redis.call('ZADD', KEYS[3], tonumber(op[4]) + grace, vid .. '|' .. op[6] .. '|' .. op[4])
    elseif held then
      -- Approved: every send of the verification still waiting converted.
      for channel, ms in string.gmatch(string.match(held, '|([^|]*)$'), '(%a+):(%d+)') do
        redis.call('ZREM', KEYS[3], vid .. '|' .. channel .. '|' .. ms)
        settle(held, channel, tonumber(ms), 1)
      end
      redis.call('HDEL', KEYS[2], vid)
    end
  end
end

-- The sends whose grace passed without an approval.
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', settle_before,
    'LIMIT', 0, 10000)) do
  local vid, channel, ms = string.match(member, '^(.*)|(%a+)|(%d+)$')
  local held = redis.call('HGET', KEYS[2], vid)
  if held then
    settle(held, channel, tonumber(ms), 0)
    local head, sends = string.match(held, '^(.*|)([^|]*)$')
    local left, this = {}, channel .. ':' .. ms
    for entry in string.gmatch(sends, '[^,]+') do
      if entry ~= this then
        left[#left + 1] = entry
      end
    end
    if #left == 0 then
      redis.call('HDEL', KEYS[2], vid)
    else
      redis.call('HSET', KEYS[2], vid, head .. table.concat(left, ','))
    end
  end
  redis.call('ZREM', KEYS[3], member)
end

local made = {}
local function low(settled, converted)
  return converted < min_share * settled
end

-- Judge one scope ('c:<client>' or '*') of a destination: its window's settled sends (the
-- client's, or everyone's), and, after a suspension of it ended less than the repeat time ago,
-- the evidence that suspension was made on (the window's rows since then are added to it): a
-- destination still converting badly when its suspension lifts is suspended again, for longer,
-- by the first send that settles, however long the suspension outlasted the window.
local function judge(scope, field, rows, client, exempt, others_bad)
  local name = scope .. '|' .. field
  local old, level = redis.call('HGET', KEYS[5], name), 1
  old = old and cjson.decode(old)
  if old and tonumber(old['until']) > now then
    return
  end
  local carried = old and now - tonumber(old['until']) < repeat_ms
  local settled, converted, since = 0, 0, -1
  if carried then
    settled, converted = tonumber(old.sends), tonumber(old.approved)
    since = math.floor(tonumber(old.since) / 60000)
    level = math.min(tonumber(old.level) + 1, #lengths)
  end
  for _, r in ipairs(rows) do
    if (client == nil or r[2] == client) and r[1] > since then
      settled, converted = settled + r[3], converted + r[4]
    end
  end
  if settled < min_sends or not low(settled, converted) or not (carried or others_bad) then
    return
  end
  local value = cjson.encode({since = now, ['until'] = now + lengths[level], level = level,
    sends = settled, approved = converted, exempt = exempt})
  redis.call('HSET', KEYS[5], name, value)
  made[#made + 1] = name
  made[#made + 1] = value
end

for _, field in ipairs(touched) do
  local rows, per, names = windows[field], {}, {}
  for _, r in ipairs(rows) do
    if not per[r[2]] then
      per[r[2]] = {0, 0}
      names[#names + 1] = r[2]
    end
    per[r[2]][1], per[r[2]][2] = per[r[2]][1] + r[3], per[r[2]][2] + r[4]
  end
  table.sort(names)
  local bad, good = 0, {}
  for _, client in ipairs(names) do
    if low(per[client][1], per[client][2]) then
      bad = bad + 1
      judge('c:' .. client, field, rows, client, '', true)
    else
      good[#good + 1] = client
    end
  end
  -- For every client only when two or more see the destination convert badly: one client's
  -- traffic alone never suspends it for another. Those converting there are exempt.
  judge('*', field, rows, nil, ',' .. table.concat(good, ',') .. ',', bad >= 2)
  local kept = {}
  for _, r in ipairs(rows) do
    kept[#kept + 1] = string.format('%d:%s:%d:%d', r[1], r[2], r[3], r[4])
  end
  if #kept == 0 then
    redis.call('HDEL', KEYS[4], field)
  else
    redis.call('HSET', KEYS[4], field, table.concat(kept, ';'))
  end
end

-- Suspensions long over, and past the time a repeat would lengthen, are forgotten.
local all = redis.call('HGETALL', KEYS[5])
for i = 1, #all, 2 do
  if tonumber(cjson.decode(all[i + 1])['until']) + repeat_ms < now then
    redis.call('HDEL', KEYS[5], all[i])
  end
end
local keep = grace + window + 3600000
redis.call('PEXPIRE', KEYS[2], keep)
redis.call('PEXPIRE', KEYS[3], keep)
redis.call('PEXPIRE', KEYS[4], keep)
redis.call('PEXPIRE', KEYS[5], repeat_ms + lengths[#lengths] + 3600000)
return {markers, made}
