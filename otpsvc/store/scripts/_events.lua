-- Events are written by the script that makes the change they report, in the same step: a
-- committed change always has its event, and no event tells of a change that did not happen.
-- The same holds for the outcome entries the funnel counts (see otpsvc/store/rollups.py).
-- Included at the top of every script that changes a verification. Such a script takes, last:
--   KEYS  the shard's stream, its expiry index, its snapshots, its escalation steps due and its
--         outcome entries (the verification's hash slot)
--   ARGV  the event's id (the prefix of the ids when a script writes several), the streams' age
--         bound in ms, the API clients with a webhook as ',a,b,' (no one else gets events),
--         and 1 when outcomes are counted (0: OTPSVC_INSIGHTS_DAYS=0)
local EV_STREAM, EV_EXPIRING = KEYS[#KEYS - 4], KEYS[#KEYS - 3]
local EV_SNAPSHOTS, EV_LADDER, EV_OUTCOMES = KEYS[#KEYS - 2], KEYS[#KEYS - 1], KEYS[#KEYS]
local EV_ID, EV_MAX_AGE, EV_WANTED = ARGV[#ARGV - 3], ARGV[#ARGV - 2], ARGV[#ARGV - 1]
local EV_COUNTED = ARGV[#ARGV] == '1'

-- What an event never carries: the code verifier, the sealed number and person of a ladder,
-- and the person a gateway's verification belongs to.
local EV_PRIVATE = {h = true, pe = true, pp = true, ow = true, px = true}

-- The record's fields but the private ones, as a table.
local function ev_snapshot(record)
  local fields = redis.call('HGETALL', record)
  local snap = {}
  for i = 1, #fields, 2 do
    if not EV_PRIVATE[fields[i]] then
      snap[fields[i]] = fields[i + 1]
    end
  end
  return snap
end

local function ev_wanted(client)
  return client ~= nil and string.find(EV_WANTED, ',' .. client .. ',', 1, true) ~= nil
end

local function ev_vid(record)
  return string.match(record, ':v:(.+)$')
end

-- File `member` in the shard's sorted set `key` (EV_EXPIRING, EV_LADDER) as due at `at` ms, and
-- say so on the channel '<prefix>:due' ("<key> <at>"): the workers look into a shard only when
-- something in it is due, instead of asking all 256 shards on every turn (see store/due.py).
local function ev_due(key, at, member)
  redis.call('ZADD', key, at, member)
  redis.call('PUBLISH', string.match(key, '^(.*):{[^}]*}:') .. ':due',
    key .. ' ' .. string.format('%d', tonumber(at)))
end

-- Add one event to the shard's stream, dropping (roughly) what is older than the age bound;
-- `extra` (a table, or nil) goes with it.
local function ev_add(id, event_type, vid, snap, at, extra)
  local oldest = string.format('%d', tonumber(at) - tonumber(EV_MAX_AGE))
  if extra then
    redis.call('XADD', EV_STREAM, 'MINID', '~', oldest, '*', 'id', id, 'type', event_type,
      'vid', vid, 'client', snap.c, 'at', at, 'rec', cjson.encode(snap), 'x', cjson.encode(extra))
  else
    redis.call('XADD', EV_STREAM, 'MINID', '~', oldest, '*', 'id', id, 'type', event_type,
      'vid', vid, 'client', snap.c, 'at', at, 'rec', cjson.encode(snap))
  end
end

-- The channel of a ladder's step ('voice' without a ladder).
local function in_channel(record, step)
  local spec, i = redis.call('HGET', record, 'ld'), 0
  for entry in string.gmatch(spec or '', '[^,]+') do
    if i == step then
      return string.match(entry, '^%s*([%w]+):') or 'voice'
    end
    i = i + 1
  end
  return 'voice'
end

-- Count an outcome for the funnel: `kind` (v: a verification begun with its first send, f: one
-- whose first send failed, r: a ladder step reached, s: a resend, a: a call answered, ok: an
-- approval), by client|country|prefix|provider|channel|step; `n` is a send's price or the ms
-- from the start to the approval. `provider` and `step` default to the record's last send.
local function in_add(record, kind, now, n, provider, step)
  if not EV_COUNTED then
    return
  end
  local f = redis.call('HMGET', record, 'c', 'px', 'p', 'li', 'pm')
  step = tonumber(step or f[4] or 0)
  -- 'px' is the country and the digits after the calling code ('NG803'); the masked number
  -- ('+234*******567') begins with the calling code.
  local px = f[2] or ''
  local range = (string.match(f[5] or '', '^%+(%d+)%*') or '') .. string.sub(px, 3)
  local dims = (f[1] or '') .. '|' .. string.sub(px, 1, 2) .. '|' .. range .. '|'
    .. (provider or f[3] or '') .. '|' .. in_channel(record, step) .. '|' .. step
  local oldest = string.format('%d', tonumber(now) - tonumber(EV_MAX_AGE))
  -- 'i' and 't': the verification, and when on the service's clock, for the conversion rule
  -- (otpsvc/store/conversion.py).
  redis.call('XADD', EV_OUTCOMES, 'MINID', '~', oldest, '*', 'k', kind, 'd', dims,
    'n', string.format('%d', n or 0), 'i', ev_vid(record), 't', now)
  -- Gone with its last entry's age when nothing is added (and no worker folds) any more.
  redis.call('PEXPIRE', EV_OUTCOMES, EV_MAX_AGE)
end

-- The verification in `record` changed (`event_type`, at `now` ms): tell its client. `ended`:
-- it is over: its expiry is no longer watched, and no escalation step follows.
local function ev_emit(record, event_type, now, ended, extra)
  local vid = ev_vid(record)
  if ended then
    redis.call('ZREM', EV_EXPIRING, vid)
    redis.call('HDEL', EV_SNAPSHOTS, vid)
    redis.call('ZREM', EV_LADDER, vid)
    -- No step follows: the sealed number and person have no more use.
    redis.call('HDEL', record, 'pe', 'pp')
  end
  if event_type == 'verification.approved' then
    in_add(record, 'ok', now, tonumber(now) - tonumber(redis.call('HGET', record, 'ca') or now))
  end
  local snap = ev_snapshot(record)
  if ev_wanted(snap.c) then
    ev_add(EV_ID, event_type, vid, snap, now, extra)
  end
end

-- An escalation ladder ('voice:termii/45,voice:sevenio'): its steps as {provider, after}.
local function ladder_steps(spec)
  local steps = {}
  for entry in string.gmatch(spec or '', '[^,]+') do
    local provider, after = string.match(entry, '^%s*[%w]+:([%w_-]+)/?(%d*)%s*$')
    steps[#steps + 1] = {provider, tonumber(after) or 45}
  end
  return steps
end

-- Watch a pending verification's expiry (for verification.expired), keeping its snapshot: the
-- record itself is gone once it expired.
local function ev_watch(record)
  local snap = ev_snapshot(record)
  if ev_wanted(snap.c) and snap.ea then
    local vid = ev_vid(record)
    ev_due(EV_EXPIRING, snap.ea, vid)
    redis.call('HSET', EV_SNAPSHOTS, vid, cjson.encode(snap))
  end
end

-- Bring a watched verification's snapshot up to date.
local function ev_refresh(record)
  if redis.call('HEXISTS', EV_SNAPSHOTS, ev_vid(record)) == 1 then
    ev_watch(record)
  end
end

