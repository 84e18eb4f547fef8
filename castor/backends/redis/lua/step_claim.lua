-- Claim, renew or release a step that must run at most once, in one step with the journal.
-- KEYS[1] the run's claims (hash: step -> '<attempt>|<lease end>|<holder>'), KEYS[2] the run's journal,
-- and, to claim a run's drive (step -1), KEYS[3] the run's fleet lease: a coordinator that leases the run
-- drives it, and holds its drive against any other process ({'held', 'fleet:' .. its token, 0, 0})
-- ARGV[1] 'claim' | 'renew' | 'release', ARGV[2] step, ARGV[3] attempt (approval round), ARGV[4] holder,
-- ARGV[5] lease (seconds), ARGV[6] a holder whose claim may be taken over ('' for none), ARGV[7] '1' to take it
-- over only while its lease has run out (a live holder that renewed it since keeps it), else '0'
-- Leases are judged by Redis's clock, which every process of the fleet shares.
-- claim returns {'journaled'} (the step has its record), {'claimed'}, or {'held', holder, attempt, expired 0|1}
-- when another holder has it for this round or a later one; renew returns 1 or 0 (not held); release 1.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local step, holder = ARGV[2], ARGV[4]
local held = redis.call('HGET', KEYS[1], step)
local attempt, lease_end, owner
if held then
  attempt, lease_end, owner = string.match(held, '^(%d+)|([^|]+)|(.*)$')
end
local function write(round)
  redis.call('HSET', KEYS[1], step, round .. '|' .. string.format('%.6f', now + tonumber(ARGV[5])) .. '|' .. holder)
end
if ARGV[1] == 'renew' then
  if owner ~= holder then
    return 0
  end
  write(attempt)
  return 1
end
if ARGV[1] == 'release' then
  if owner == holder then
    redis.call('HDEL', KEYS[1], step)
  end
  return 1
end
if KEYS[3] then
  local fleet = redis.call('GET', KEYS[3])
  if fleet then
    return {'held', 'fleet:' .. fleet, '0', '0'}
  end
end
if redis.call('ZRANGEBYSCORE', KEYS[2], step, step, 'LIMIT', 0, 1)[1] then
  return {'journaled'}
end
local taken_over = ARGV[6] ~= '' and owner == ARGV[6] and not (ARGV[7] == '1' and tonumber(lease_end) > now)
if owner and owner ~= holder and not taken_over and tonumber(attempt) >= tonumber(ARGV[3]) then
  local expired = '0'
  if tonumber(lease_end) <= now then
    expired = '1'
  end
  return {'held', owner, attempt, expired}
end
write(ARGV[3])
return {'claimed'}
