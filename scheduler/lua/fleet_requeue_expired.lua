-- Queue a run whose lease ran out, so another coordinator takes it over and replays its journal.
-- KEYS[1] the run's lease key, KEYS[2] the leased index, KEYS[3] the run queue, KEYS[4] the lapsed set
-- ARGV[1] pid
-- Returns 1 queued, 0 the lease is alive or someone queued the run already.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then
  return 0
end
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1]) -- its next lease is a takeover (fleet_acquire counts it)
return 1
