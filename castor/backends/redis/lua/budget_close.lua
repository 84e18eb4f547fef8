-- Drop a run's ledger and its charge records, and take the run off the reservation index.
-- KEYS[1] run ledger, KEYS[2] run charges, KEYS[3] reservation index
-- ARGV[1] run id
redis.call('ZREM', KEYS[3], ARGV[1])
return redis.call('DEL', KEYS[1], KEYS[2])
