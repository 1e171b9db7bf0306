-- Set aside IP-days for consolidation. KEYS: the index, the in-flight set, then pairs (day hash, batch
-- key). Atomic on a single node, so an increment lands either in the batch or in a new hash that is
-- listed in the index again. Returns the batch keys actually created (IP-days with a hash).
local claimed = {}
for i = 3, #KEYS, 2 do
  redis.call('SREM', KEYS[1], KEYS[i])
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('RENAME', KEYS[i], KEYS[i + 1])
    redis.call('SADD', KEYS[2], KEYS[i + 1])
    claimed[#claimed + 1] = KEYS[i + 1]
  end
end
return claimed
