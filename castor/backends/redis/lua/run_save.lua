-- Store a run's header, move it to its status index, and apply retention to all its keys.
-- KEYS[1] the run's header hash, KEYS[2] all-runs index, KEYS[3] expiring-runs index,
-- KEYS[4..8] the five status indexes, KEYS[9] the lease key of the run's fence (read only when a
-- fencing token is given), KEYS[10..] the run's other keys (journal, approvals, ...)
-- ARGV[1] pid, ARGV[2] index of its status among KEYS[4..8] (1-5), ARGV[3] created (index score),
-- ARGV[4] retention seconds ('0': the run is not finished, keep it), ARGV[5] now, ARGV[6] fencing token or '',
-- ARGV[7] the finished status a resume asked for reopens ('' for a plain save), ARGV[8] '1' to create the run
-- only (a fork: of two forkers one stores it), ARGV[9..] header field, value pairs
-- Returns 1 (also when creating a run whose stored header is this one); 0 when creating a run whose header exists; or the stored status of a finished run the save would
-- move out of its end (nothing written either way).
if ARGV[6] ~= '' then
  local holder = redis.call('GET', KEYS[9])
  if holder ~= ARGV[6] then
    return redis.error_reply('CASTOR_STALE_LEASE the lease is held by ' .. (holder or 'nobody'))
  end
end
local stored = redis.call('HGET', KEYS[1], 'status')
if ARGV[8] == '1' and stored then
  -- The same header again is this creator's own create run twice (a retry after a lost reply): done.
  for i = 9, #ARGV - 1, 2 do
    if ARGV[i] == 'cp' then
      return redis.call('HGET', KEYS[1], 'cp') == ARGV[i + 1] and 1 or 0
    end
  end
  return 0
end
if (stored == 'COMPLETED' or stored == 'FAILED') and stored ~= ARGV[7] then
  return stored
end
local pid = ARGV[1]
local own = 3 + tonumber(ARGV[2])
for i = 4, 8 do
  if i ~= own then
    redis.call('ZREM', KEYS[i], pid)
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('ZADD', KEYS[2], ARGV[3], pid)
redis.call('ZADD', KEYS[own], ARGV[3], pid)
local retention = tonumber(ARGV[4])
local kept = {KEYS[1]}
for i = 10, #KEYS do
  kept[#kept + 1] = KEYS[i]
end
for _, key in ipairs(kept) do
  if retention > 0 then
    redis.call('EXPIRE', key, retention)
  else
    redis.call('PERSIST', key)
  end
end
if retention > 0 then
  redis.call('ZADD', KEYS[3], tonumber(ARGV[5]) + retention, pid)
else
  redis.call('ZREM', KEYS[3], pid)
end
return 1
