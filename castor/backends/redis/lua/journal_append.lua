-- Write one journal record, once.
-- KEYS[1] the run's journal hash, KEYS[2] its meta hash (fork base `at`, contiguous `len`),
-- KEYS[3] the run's lease key (read only when a fencing token is given)
-- ARGV[1] step, ARGV[2] record JSON, ARGV[3] fencing token or ''
-- Returns 1 written, 2 this very record was there already (a retried write), 0 another record holds the step.
if ARGV[3] ~= '' then
  local holder = redis.call('GET', KEYS[3])
  if holder ~= ARGV[3] then
    return redis.error_reply('CASTOR_STALE_LEASE the lease is held by ' .. (holder or 'nobody'))
  end
end
local step = tonumber(ARGV[1])
local meta = redis.call('HMGET', KEYS[2], 'at', 'len')
local at = tonumber(meta[1]) or 0
if step < at then
  return 0 -- a fork's shared prefix belongs to its parent and is never rewritten
end
local prior = redis.call('HGET', KEYS[1], ARGV[1])
if prior then
  if prior == ARGV[2] then
    return 2
  end
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local len = tonumber(meta[2]) or at
if step == len then
  -- records may arrive out of order (workers journal themselves): advance over every one present
  len = len + 1
  while redis.call('HEXISTS', KEYS[1], tostring(len)) == 1 do
    len = len + 1
  end
  redis.call('HSET', KEYS[2], 'len', len)
end
return 1
