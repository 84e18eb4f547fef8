-- Lease a run a coordinator just took off the queue, counting it if it is a takeover.
-- KEYS[1] the run's lease key, KEYS[2] the leased index, KEYS[3] the coordinator's taking list,
-- KEYS[4] the cancelled set, KEYS[5] the lapsed set, KEYS[6] the takeovers hash, KEYS[7] the run's step claims
-- ARGV[1] pid, ARGV[2] fencing token, ARGV[3] lease time (ms), ARGV[4] most takeovers in a row allowed
-- Returns {'ok', takeovers}, {'quarantine', takeovers} (leased, to be stored FAILED), {'cancelled'}, or
-- {'held', token of the holder} (a duplicate queue entry: drop it), or {'driven', holder, ms left} while a
-- process drives the run embedded on the fleet's Redis (a host program, an MCP gateway: its drive claim, step
-- -1 of the claims, with a live lease): nothing is done but the pid stays on the taking list, for the
-- coordinator to try again once that drive ends (a coordinator that dies meanwhile has it queued again).
-- A drive claim whose lease ran out is dropped here, in the same step as the lease: its holder, if it only
-- stalled, finds its claim gone at its next renewal and stops (castor.kernel.claims).
-- A takeover is a lease on a run whose previous lease ran out without a release (its driver died, stalled
-- or lost Redis): the sweep marked it lapsed, or the leased index still holds it with no lease alive.
-- Takeovers count in a row, here, in the same step as the lease: a release clears the count.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local drive = redis.call('HGET', KEYS[7], '-1')
if drive then
  local lease_end, owner = string.match(drive, '^%d+|([^|]+)|(.*)$')
  local left = 0  -- a claim that is not one of Castor's (written by hand, garbled) holds nothing: dropped
  if lease_end and tonumber(lease_end) then
    left = math.floor(tonumber(lease_end) * 1000) - now
  end
  if left > 0 then
    -- on the list once, also a run set aside that was adopted (on no list): where a death finds it
    redis.call('LREM', KEYS[3], 1, ARGV[1])
    redis.call('LPUSH', KEYS[3], ARGV[1])
    return {'driven', owner, left}
  end
  redis.call('HDEL', KEYS[7], '-1')
end
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
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
if n > tonumber(ARGV[4]) then
  return {'quarantine', n}
end
return {'ok', n}
