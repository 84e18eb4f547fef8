-- A coordinator gives up on a task whose publish failed but may have landed: from now on no worker runs it,
-- unless one took it already.
-- KEYS[1] the run's journal (sorted set of records scored by step), KEYS[2] the step's deliveries (the
-- task messages workers took, by '<task id>/<retries>'), KEYS[3] the step's abandoned tasks (set of task ids)
-- ARGV[1] step, ARGV[2] task id, ARGV[3] ttl (s)
-- Returns -2 when the journal holds the step (it ran: its record is the result); 1 when a worker took the
-- task (it runs: wait for its reply); 0 when it is abandoned (a worker that takes it later drops it).
if redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1], 'LIMIT', 0, 1)[1] then
  return -2
end
if redis.call('HEXISTS', KEYS[2], ARGV[2] .. '/0') == 1 then
  return 1
end
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[3])
return 0
