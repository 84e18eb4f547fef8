-- Take runs whose retention ran out off every index (their keys expired by themselves).
-- KEYS[1] expiring-runs index, KEYS[2] all-runs index, KEYS[3..7] the five status indexes, KEYS[8] the set of
-- runs submitted to the fleet (else it would keep every pid the fleet ever ran)
-- ARGV[1] now (unix time), ARGV[2] most runs to prune in one call
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, pid in ipairs(gone) do
  for i = 1, 7 do
    redis.call('ZREM', KEYS[i], pid)
  end
  redis.call('SREM', KEYS[8], pid)
end
return #gone
