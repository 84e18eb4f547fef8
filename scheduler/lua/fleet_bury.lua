-- Forget a coordinator whose registration ran out and queue the runs it took but never leased.
-- KEYS[1] the coordinators index, KEYS[2] its taking list, KEYS[3] the run queue, KEYS[4] its hash
-- ARGV[1] its name
-- Returns how many runs were queued, or -1 if it is alive after all.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if tonumber(score) > now then
    return -1
  end
end
local n = 0
while redis.call('LMOVE', KEYS[2], KEYS[3], 'RIGHT', 'RIGHT') do
  n = n + 1
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[4])
return n
