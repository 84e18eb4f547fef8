-- Lease a run a coordinator just took off the queue, counting it if it is a takeover.
-- KEYS[1] the run's lease key, KEYS[2] the leased index, KEYS[3] the coordinator's taking list,
-- KEYS[4] the cancelled set, KEYS[5] the lapsed set, KEYS[6] the takeovers hash
-- ARGV[1] pid, ARGV[2] fencing token, ARGV[3] lease time (ms), ARGV[4] most takeovers in a row allowed
-- Returns {'ok', takeovers}, {'quarantine', takeovers} (leased, to be stored FAILED), {'cancelled'}, or
-- {'held', token of the holder} (a duplicate queue entry: drop it).
-- A takeover is a lease on a run whose previous lease ran out without a release (its driver died, stalled
-- or lost Redis): the sweep marked it lapsed, or the leased index still holds it with no lease alive.
-- Takeovers count in a row, here, in the same step as the lease: a release clears the count.
redis.call('LREM', KEYS[3], 1, ARGV[1])
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then
  redis.call('SREM', KEYS[5], ARGV[1])
  redis.call('HDEL', KEYS[6], ARGV[1])
  return {'cancelled'}
end
local holder = redis.call('GET', KEYS[1])
if holder then
  return {'held', holder}
end
local lapsed = redis.call('SREM', KEYS[5], ARGV[1]) == 1
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  lapsed = true
end
local n
if lapsed then
  n = redis.call('HINCRBY', KEYS[6], ARGV[1], 1)
else
  n = tonumber(redis.call('HGET', KEYS[6], ARGV[1]) or '0')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
if n > tonumber(ARGV[4]) then
  return {'quarantine', n}
end
return {'ok', n}
