-- Extend a lease, only for the coordinator whose token it holds.
-- KEYS[1] the run's lease key, KEYS[2] the leased index
-- ARGV[1] pid, ARGV[2] fencing token, ARGV[3] lease time (ms)
-- Returns 1 renewed, 0 the lease is lost (expired, or another coordinator holds it).
if redis.call('GET', KEYS[1]) ~= ARGV[2] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return 1
