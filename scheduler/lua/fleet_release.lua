-- Give a lease up and say where the run goes next.
-- KEYS[1] the run's lease key, KEYS[2] the leased index, KEYS[3] the run queue, KEYS[4] the parked hash,
-- KEYS[5] the cancelled set, KEYS[6] the takeovers hash
-- ARGV[1] pid, ARGV[2] fencing token, ARGV[3] 'done' | 'requeue' | 'park', ARGV[4] the step a parked run waits on
-- Returns 1 released, 2 not parked because the run was cancelled meanwhile, 0 the lease was lost already.
if redis.call('GET', KEYS[1]) ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[6], ARGV[1]) -- its driver let go of it: the takeovers in a row start again
local mode = ARGV[3]
if mode == 'requeue' then
  redis.call('RPUSH', KEYS[3], ARGV[1]) -- the right end is taken next: a drained run goes first
elseif mode == 'park' then
  if redis.call('SISMEMBER', KEYS[5], ARGV[1]) == 1 then
    return 2
  end
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[4])
else
  redis.call('SREM', KEYS[5], ARGV[1])
end
return 1
