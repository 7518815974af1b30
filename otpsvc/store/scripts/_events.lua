-- Events are written by the script that makes the change they report, in the same step: a
-- committed change always has its event, and no event tells of a change that did not happen.
-- Included at the top of every script that changes a verification. Such a script takes, last:
--   KEYS  the shard's stream, its expiry index, its snapshots and its escalation steps due (the
--         verification's hash slot)
--   ARGV  the event's id (the prefix of the ids when a script writes several), the stream's age
--         bound in ms, and the API clients with a webhook as ',a,b,' (no one else gets events)
local EV_STREAM, EV_EXPIRING = KEYS[#KEYS - 3], KEYS[#KEYS - 2]
local EV_SNAPSHOTS, EV_LADDER = KEYS[#KEYS - 1], KEYS[#KEYS]
local EV_ID, EV_MAX_AGE, EV_WANTED = ARGV[#ARGV - 2], ARGV[#ARGV - 1], ARGV[#ARGV]

-- What an event never carries: the code verifier, the sealed number and person of a ladder,
-- and the person a gateway's verification belongs to.
local EV_PRIVATE = {h = true, pe = true, pp = true, ow = true}

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

