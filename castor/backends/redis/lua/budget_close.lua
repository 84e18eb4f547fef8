-- Drop a run's ledger and its charge records, and take its reservations off the index.
-- KEYS[1] run ledger, KEYS[2] run charges, KEYS[3] reservation index
local records = redis.call('HVALS', KEYS[2])
for _, record in ipairs(records) do
  redis.call('ZREM', KEYS[3], cjson.decode(record).m)
end
redis.call('DEL', KEYS[1], KEYS[2])
return #records
