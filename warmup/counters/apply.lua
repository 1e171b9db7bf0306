-- KEYS: per IP-day of the batch, its counts hash then its de-duplication set; then (single node) the
-- index key and the window index key; then the window hashes the spec names.
-- ARGV[1] = the spec, one JSON array: [de-duplication TTL in seconds, position of the index key in KEYS
-- (0: none), adds, groups, window, references, windows], where
--   adds = what the groups add: [[field, amount, field, amount ...], ...] (a batch repeats a few dozen);
--   groups = one flat array of numbers, three per group: IP-day number, what it adds (position in
--     adds), its events; the groups of an IP-day next to each other;
--   window = the request's rate-limit window: [position of its key in KEYS, limit, seconds to keep it]
--     ([0]: none);
--   references = [position of their hash in KEYS, seconds to keep it, IP id (text), how many references
--     name it, IP id, how many ...] ([0]: none);
--   windows = the throttling window counters: [the window hashes' expiry in seconds, buckets per window
--     hash, per IP-day {window hash number: its position in KEYS}, [position in KEYS of a window hash
--     holding a throttling deferral, its latest bucket, ...]] (those go to the window index, a sorted set,
--     with that score).
-- ARGV[2] = the references joined by the unit separator, those of each IP of the spec together in that
-- order (an IP id travels once rather than once a reference); ARGV[2 + n] = the de-duplication keys of
-- IP-day n in the order of its groups, 16 bytes each, end to end.
-- A few strings rather than thousands of arguments: packing, sending and reading many arguments costs
-- redis-py and Redis more than decoding costs the script.
-- De-duplication is two commands per IP-day, whatever the number of its events: SMISMEMBER tells which
-- keys the day's set already holds, SADD adds them. When SADD adds every key, none was known and none
-- is repeated (the usual case): the keys are not looked at one by one. Otherwise a key already known is
-- a duplicate, and so is the second occurrence of a key repeated within the batch. The set's expiry is
-- renewed with each batch, so a key is remembered at least the TTL. The IP-day's groups are then summed
-- without their duplicates: each field of an IP-day gets one HINCRBY per batch (Lua numbers are doubles:
-- exact below 2^53), and the IP-days counted go to the index in one SADD.
-- A field whose name starts with "@" is a window counter ("@d<bucket>:<provider>"): it goes to the window
-- hash of its IP-day and hour (bucket // buckets per hash), which expires by itself, instead of the
-- counts hash, which consolidation reads.
-- The window is counted first (INCR; its first hit sets its expiry): over its limit, nothing else is done.
-- Then the references are written, then the counts.
-- Returns -1 for a full window, else, per group with duplicates, {its number, 1-based positions among its
-- keys of the duplicates ...}.
local spec = cjson.decode(ARGV[1])
local ttl, index, adds, groups, window, refs, windows = spec[1], spec[2], spec[3], spec[4], spec[5], spec[6], spec[7]
if window[1] > 0 then
  local hits = redis.call('INCR', KEYS[window[1]])
  if hits == 1 then
    redis.call('EXPIRE', KEYS[window[1]], window[3])
  end
  if hits > window[2] then
    return -1
  end
end
local CHUNK = 4000
if refs[1] > 0 then
  -- Each IP's references are cut with a plain find (faster than a pattern) and followed by its id.
  local packed, fields, n, first = ARGV[2], {}, 0, 1
  local find, sub = string.find, string.sub
  for group = 3, #refs, 2 do
    local ip_id = refs[group]
    for _ = 1, refs[group + 1] do
      local last = find(packed, '\31', first, true) or (#packed + 1)
      fields[n + 1] = sub(packed, first, last - 1)
      fields[n + 2] = ip_id
      n = n + 2
      first = last + 1
    end
  end
  for i = 1, n, CHUNK do
    redis.call('HSET', KEYS[refs[1]], unpack(fields, i, math.min(i + CHUNK - 1, n)))
  end
  redis.call('EXPIRE', KEYS[refs[1]], refs[2])
end
local window_ttl, per_hash, window_keys = windows[1], windows[2], windows[3]
-- Where the groups of each IP-day start in `groups` (they are next to each other).
local first_group = {}
for j = #groups - 2, 1, -3 do
  first_group[groups[j]] = j
end
local found = {}
local touched = {}
for h = 1, #ARGV - 2 do
  local packed = ARGV[2 + h]
  local keys = {}
  local k = 0
  for first = 1, #packed, 16 do
    k = k + 1
    keys[k] = string.sub(packed, first, first + 15)
  end
  local n = #keys
  local set = KEYS[2 * h]
  local flags = nil -- per key, 1 for a duplicate; nil: no duplicate
  if n == 1 then
    if redis.call('SADD', set, keys[1]) == 0 then
      flags = {1}
    end
    redis.call('EXPIRE', set, ttl)
  elseif n > 1 then
    local added = 0
    local known = {}
    for first = 1, n, CHUNK do
      local upto = math.min(first + CHUNK - 1, n)
      known[#known + 1] = redis.call('SMISMEMBER', set, unpack(keys, first, upto))
      added = added + redis.call('SADD', set, unpack(keys, first, upto))
    end
    redis.call('EXPIRE', set, ttl)
    if added < n then
      flags = {}
      local seen = {}
      local i = 0
      for _, part in ipairs(known) do
        for j = 1, #part do
          i = i + 1
          local flag = part[j]
          if flag == 0 then
            if seen[keys[i]] then flag = 1 else seen[keys[i]] = true end
          end
          flags[i] = flag
        end
      end
    end
  end
  -- The IP-day's sums, group by group, without the duplicates.
  local sums = {}
  local offset = 0
  local j = first_group[h]
  while j <= #groups and groups[j] == h do
    local fields, keyed = adds[groups[j + 1]], groups[j + 2]
    local counted = keyed
    if flags then
      local result = {(j + 2) / 3}
      for i = 1, keyed do
        if flags[offset + i] ~= 0 then
          result[#result + 1] = i
        end
      end
      counted = keyed - (#result - 1)
      if #result > 1 then
        found[#found + 1] = result
      end
    end
    offset = offset + keyed
    if counted > 0 then
      for f = 1, #fields, 2 do
        sums[fields[f]] = (sums[fields[f]] or 0) + fields[f + 1] * counted
      end
    end
    j = j + 3
  end
  local counts, windowed, any = KEYS[2 * h - 1], nil, false
  for field, amount in pairs(sums) do
    any = true
    if string.byte(field, 1) == 64 then -- "@"
      local bucket = tonumber(string.sub(field, 3, string.find(field, ':', 3, true) - 1))
      local hash = KEYS[window_keys[h][tostring(math.floor(bucket / per_hash))]]
      redis.call('HINCRBY', hash, field, amount)
      windowed = windowed or {}
      windowed[hash] = true
    else
      redis.call('HINCRBY', counts, field, amount)
    end
  end
  if windowed then
    for hash in pairs(windowed) do
      redis.call('EXPIRE', hash, window_ttl)
    end
  end
  if any then
    touched[#touched + 1] = counts
  end
end
if index > 0 then
  for first = 1, #touched, CHUNK do
    redis.call('SADD', KEYS[index], unpack(touched, first, math.min(first + CHUNK - 1, #touched)))
  end
  local throttled = windows[4]
  for w = 1, #throttled, 2 do
    redis.call('ZADD', KEYS[index + 1], 'GT', throttled[w + 1], KEYS[throttled[w]])
  end
end
return found
