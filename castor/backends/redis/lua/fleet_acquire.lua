-- Lease a run a coordinator just took off the queue.
-- KEYS[1] the run's lease key, KEYS[2] the leased index, KEYS[3] the coordinator's taking list,
-- KEYS[4] the cancelled set
-- ARGV[1] pid, ARGV[2] fencing token, ARGV[3] lease time (ms)
-- Returns {'ok'}, {'cancelled'}, or {'held', token of the holder} (a duplicate queue entry: drop it).
redis.call('LREM', KEYS[3], 1, ARGV[1])
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then
  return {'cancelled'}
end
local holder = redis.call('GET', KEYS[1])
if holder then
  return {'held', holder}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return {'ok'}
