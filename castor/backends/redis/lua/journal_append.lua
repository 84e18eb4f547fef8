-- Write one journal record, once.
-- KEYS[1] the run's journal (sorted set: each stored record scored by its step), KEYS[2] its meta hash
-- (fork base `at`, contiguous `len`), KEYS[3] the run's lease key (read only when a fencing token is given)
-- ARGV[1] step, ARGV[2] the record's JSON, ARGV[3] fencing token or ''
-- A member of a sorted set is unique, and two steps may hold equal records: a record equal to another
-- step's is stored led by '"_s":<step>,' (which the reader ignores), every other one as it is.
-- KEYS[1] is '<prefix>:{<run>}:journal': the run's charges are named from it.
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
local function stepped()
  return '{"_s":' .. ARGV[1] .. ',' .. string.sub(ARGV[2], 2)
end
local prior = redis.call('ZRANGEBYSCORE', KEYS[1], step, step)[1]
if prior then
  if prior == ARGV[2] or prior == stepped() then
    return 2
  end
  return 0
end
if redis.call('ZADD', KEYS[1], 'NX', step, ARGV[2]) == 0 then
  redis.call('ZADD', KEYS[1], step, stepped()) -- another step holds an equal record
end
-- The step's charge is spent now: its record leaves the run's charges ('<prefix>:{<run>}:charges', same
-- hash tag as KEYS[1]), so a sweep never looks at it again.
redis.call('HDEL', string.sub(KEYS[1], 1, -8) .. 'charges', ARGV[1])
local len = tonumber(meta[2]) or at
if step == len then
  -- records may arrive out of order (workers journal themselves): advance over every one present
  len = len + 1
  while redis.call('ZCOUNT', KEYS[1], len, len) > 0 do
    len = len + 1
  end
  redis.call('HSET', KEYS[2], 'len', len)
end
return 1
