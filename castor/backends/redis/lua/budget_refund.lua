-- Give back what one step was charged, once.
-- KEYS[1] run charges, KEYS[2] reservation index, KEYS[3] the run's journal, KEYS[4..] the ledgers
-- the charge recorded, in its order
-- ARGV[1] step, ARGV[2] the charge record as the caller read it, ARGV[3] reservation member,
-- ARGV[4] 'sweep' (a journaled step's charge is spent: settle it instead of refunding) or ''
-- Returns 1 refunded, 0 nothing to give back.
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then
  redis.call('ZREM', KEYS[2], ARGV[3])
  return 0
end
if record ~= ARGV[2] then
  return 0 -- charged again since the caller looked: that is another reservation
end
redis.call('ZREM', KEYS[2], ARGV[3])
if ARGV[4] == 'sweep' and redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
local data = cjson.decode(record)
for _, t in ipairs(data.t) do
  local key = KEYS[3 + t[1]]
  local field = 'U:' .. t[2]
  -- a ledger dropped since (run closed, scope deleted) is not brought back to life
  if redis.call('HEXISTS', key, 'L:' .. t[2]) == 1 then
    local used = tonumber(redis.call('HGET', key, field) or '0')
    if used - tonumber(t[3]) < 0 then
      redis.call('HSET', key, field, 0) -- reset since the charge: never below zero
    else
      redis.call('HINCRBYFLOAT', key, field, -tonumber(t[3]))
    end
  end
end
return 1
