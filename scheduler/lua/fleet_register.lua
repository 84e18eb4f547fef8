-- Register (or refresh) a live coordinator and what it reports about itself.
-- KEYS[1] the coordinators index, KEYS[2] its hash
-- ARGV[1] its name, ARGV[2] how long the registration lasts (ms), ARGV[3..] field, value pairs
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if #ARGV > 2 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 3))
end
redis.call('HSET', KEYS[2], 'seen', now)
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return now
