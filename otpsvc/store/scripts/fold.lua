-- Fold a batch of one shard's outcome entries (its ':in' stream) into the funnel's rollups, once.
-- The batch is the entries after the shard's marker up to its last entry: it is folded only if
-- the marker is still where the batch began, and the marker moves in the same step, so a
-- worker killed at any point, or two workers folding the same entries, count each exactly once.
-- KEYS[1]  the markers: a hash of shard tag -> the id of the last entry folded
-- KEYS[2..] the rollup hashes the batch adds to (an hour's or a day's, of one kind)
-- ARGV[1]  the shard's tag     ARGV[2]  the marker the batch read after ('0-0' for none)
-- ARGV[3]  the id of the batch's last entry
-- ARGV[4]  how long the markers are kept, ms (longer than any entry waits)
-- ARGV[5..4+#KEYS-1]  when each rollup hash expires (Unix ms), in the order of KEYS[2..]
-- then triples: the index of the rollup in KEYS, a field (the dimensions), the increments
-- (comma-separated integers, the counts of otpsvc/store/rollups.py METRICS)
-- Returns the shard's marker after the call: ARGV[3] when folded, the marker found otherwise.
local marker = redis.call('HGET', KEYS[1], ARGV[1]) or '0-0'
if marker ~= ARGV[2] then
  return marker
end

local function add(old, more)
  if not old then
    return more
  end
  local a, b, out = {}, {}, {}
  for n in string.gmatch(old, '[^,]+') do a[#a + 1] = tonumber(n) end
  for n in string.gmatch(more, '[^,]+') do b[#b + 1] = tonumber(n) end
  for i = 1, math.max(#a, #b) do
    out[i] = string.format('%d', (a[i] or 0) + (b[i] or 0))
  end
  return table.concat(out, ',')
end

local rollups = #KEYS - 1
for i = 5 + rollups, #ARGV, 3 do
  local key = KEYS[tonumber(ARGV[i])]
  redis.call('HSET', key, ARGV[i + 1], add(redis.call('HGET', key, ARGV[i + 1]), ARGV[i + 2]))
end
for i = 1, rollups do
  redis.call('PEXPIREAT', KEYS[i + 1], ARGV[4 + i])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return ARGV[3]
