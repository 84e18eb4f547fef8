-- Record a call waiting for a human, unless that step's round waits or was decided already.
-- KEYS[1] the run's approvals hash, KEYS[2] pending index, KEYS[3] expiring index
-- ARGV[1] step, ARGV[2] pending JSON, ARGV[3] created (unix time, for the order of the pending index only),
-- ARGV[4] seconds the call may wait or '' (it expires that long after now by Redis's clock, never a client's:
-- 'e:<step>' holds the expiry every reader and the decide script judge by), ARGV[5] index member,
-- ARGV[6] the approval round (attempt); a later round than 'a:<step>' drops the earlier decision: it no longer
-- authorizes the step (the step went in doubt after its worker was lost), nor does the request it decided
-- Returns 1 recorded, 0 already there.
local step = ARGV[1]
local attempt = tonumber(ARGV[6] or '0') or 0
local round = tonumber(redis.call('HGET', KEYS[1], 'a:' .. step) or '0')
if attempt > round then
  redis.call('HDEL', KEYS[1], 'd:' .. step, 'r:' .. step, 'p:' .. step, 'e:' .. step)
  redis.call('ZREM', KEYS[3], ARGV[5])
  redis.call('HSET', KEYS[1], 'a:' .. step, attempt)
elseif attempt < round or redis.call('HEXISTS', KEYS[1], 'd:' .. step) == 1
    or redis.call('HEXISTS', KEYS[1], 'p:' .. step) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'p:' .. step, ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
if ARGV[4] ~= '' then
  local t = redis.call('TIME')
  local expires = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], 'e:' .. step, string.format('%.6f', expires))
  redis.call('ZADD', KEYS[3], expires, ARGV[5])
end
return 1
