-- Wake a parked run: whoever removes it from the parked hash queues it, so it is queued once.
-- KEYS[1] the parked hash, KEYS[2] the run queue
-- ARGV[1] pid
-- Returns 1 queued, 0 it was not parked (another coordinator woke it, or it was never parked).
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1]) -- a decided run goes before fresh submissions
  return 1
end
return 0
