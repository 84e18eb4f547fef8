-- Score a run in the reservation index by its earliest unsettled claim end, or take it off the index.
-- KEYS[1] the run's charges, KEYS[2] the reservation index, KEYS[3] the run's ledger
-- ARGV[1] run id
-- The ledger's `I` (the claim end the run is indexed under) lets a charge skip the index; it is kept
-- no earlier than the run's score. Returns the run's unsettled charges.
local earliest
local records = redis.call('HVALS', KEYS[1])
for _, record in ipairs(records) do
  local a = string.find(record, '\0', 1, true)
  local b = string.find(record, '\0', a + 1, true)
  local claim = tonumber(string.sub(record, a + 1, (b or 0) - 1))
  if not earliest or claim < earliest then
    earliest = claim
  end
end
if earliest then
  redis.call('ZADD', KEYS[2], earliest, ARGV[1])
  redis.call('HSET', KEYS[3], 'I', earliest)
else
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], 'I')
end
return #records
