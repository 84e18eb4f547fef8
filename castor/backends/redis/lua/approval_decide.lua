-- Decide a pending call: the first decision wins, and it is announced on the decision stream.
-- KEYS[1] the run's approvals hash, KEYS[2] pending index, KEYS[3] expiring index, KEYS[4] decision stream
-- ARGV[1] step, ARGV[2] decision JSON ('' to apply only the expiry), ARGV[3] index member,
-- ARGV[4] '' or a time to expire as of (a sweep's cutoff): expiry is judged by Redis's clock, or that time if
-- later (it can only expire a call early, never let one through late); never by a deciding client's clock,
-- ARGV[5] the expiry's decision JSON, applied instead once the call has expired ('' to decide regardless),
-- ARGV[6] run id, ARGV[7] stream length kept (approximate), ARGV[8] the round the caller stamped the decisions with
-- Returns {'ok', decision} | {'expired', the expiry's decision} | {'decided', the earlier decision} | {'none'}
-- | {'pending'} (only the expiry was asked for and the call has not expired) | {'stale'} (another round is open).
local step = ARGV[1]
if tonumber(redis.call('HGET', KEYS[1], 'a:' .. step) or '0') ~= tonumber(ARGV[8] or '0') then
  return {'stale'}
end
local prior = redis.call('HGET', KEYS[1], 'd:' .. step)
if prior then
  return {'decided', prior}
end
if redis.call('HEXISTS', KEYS[1], 'p:' .. step) == 0 then
  return {'none'}
end
local status, chosen = 'ok', ARGV[2]
local expires = tonumber(redis.call('HGET', KEYS[1], 'e:' .. step) or '')
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if ARGV[4] ~= '' and tonumber(ARGV[4]) > now then
  now = tonumber(ARGV[4])
end
if ARGV[5] ~= '' and expires and expires <= now then
  status, chosen = 'expired', ARGV[5]
elseif chosen == '' then
  return {'pending'} -- only the expiry was asked for, and the call has not expired
end
-- The decided request stays as 'r:<step>', written with the decision: a worker checks an unsigned task's
-- tool and arguments against what the human saw.
redis.call('HSET', KEYS[1], 'd:' .. step, chosen, 'r:' .. step, redis.call('HGET', KEYS[1], 'p:' .. step))
redis.call('HDEL', KEYS[1], 'p:' .. step, 'e:' .. step)
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'run', ARGV[6], 'step', step, 'decision', chosen)
return {status, chosen}
