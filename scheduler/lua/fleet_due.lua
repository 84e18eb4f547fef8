-- Members of a sorted set whose score (a time in ms) has passed, by the server's clock.
-- KEYS[1] the sorted set; ARGV[1] how many at most
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
