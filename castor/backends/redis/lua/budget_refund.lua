-- Give back what one step was charged, once.
-- KEYS[1] run charges, KEYS[2] the run's journal, KEYS[3..] the ledgers the charge record names
-- ARGV[1] step, ARGV[2] the charge record as the caller read it,
-- ARGV[3] 'sweep' (a journaled step's charge is spent: settle it instead of refunding) or ''
-- A record is NUL-joined: holder, claim end, then ledger, resource, amount, period of every part taken.
-- A part is given back only to the period it was taken from (the ledger's `R`): a scope reset or a run
-- ledger reopened since spent it, so a refund never lowers the new period's usage.
-- Returns 1 refunded, 0 nothing to give back (a record that took nothing is dropped all the same).
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record or record ~= ARGV[2] then
  return 0 -- gone, or charged again since the caller looked: that is another reservation
end
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[3] == 'sweep' and redis.call('ZCOUNT', KEYS[2], ARGV[1], ARGV[1]) > 0 then
  return 0 -- journaled (a journal write settles its step's charge; this one was missed): spent
end
local f, at = {}, 1
while true do
  local z = string.find(record, '\0', at, true)
  if not z then
    f[#f + 1] = string.sub(record, at)
    break
  end
  f[#f + 1] = string.sub(record, at, z - 1)
  at = z + 1
end
for i = 3, #f - 3, 4 do
  local key, resource, amount, period = f[i], f[i + 1], f[i + 2], f[i + 3]
  local field = 'U:' .. resource
  -- a ledger dropped since (run closed, scope deleted) is not brought back to life
  local limit, now = unpack(redis.call('HMGET', key, 'L:' .. resource, 'R'))
  if limit and (now or '0') == period then
    local used = tonumber(redis.call('HGET', key, field) or '0')
    if used - tonumber(amount) < 0 then
      redis.call('HSET', key, field, 0) -- reset since the charge: never below zero
    else
      local left
      if string.sub(amount, 1, 1) == '-' then
        left = redis.call('HINCRBYFLOAT', key, field, string.sub(amount, 2))
      else
        left = redis.call('HINCRBYFLOAT', key, field, '-' .. amount) -- the exact decimal that was taken
      end
      if tonumber(left) < 0 then
        redis.call('HSET', key, field, 0) -- a rounding's dust below zero (the check above is in doubles)
      end
    end
  end
end
if #f > 2 then
  return 1
end
return 0
