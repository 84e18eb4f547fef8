-- Settle one step's charge to what it used: a model call's reservation becomes its reported usage.
-- KEYS[1] run charges, KEYS[2..] the ledgers the charge record names
-- ARGV[1] step, ARGV[2] the charge record as the caller read it, then resource, amount pairs (the usage).
-- Each part of the record (ledger, resource, amount, period) is replaced by the usage of that resource: the
-- ledger gets back the difference, or gives more if the call used more than it reserved. A part whose
-- ledger was reset or reopened since (another period) is left as it is: the reset spent it. The record
-- stays, with the settled amounts, until the journal write spends it (or a refund gives them back).
-- Returns 1 settled, 0 the record is gone or changed since the caller read it.
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record or record ~= ARGV[2] then
  return 0
end
local usage = {}
for i = 3, #ARGV - 1, 2 do
  usage[ARGV[i]] = ARGV[i + 1]
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
  local actual = usage[resource] or '0'
  local limit, now, used = unpack(redis.call('HMGET', key, 'L:' .. resource, 'R', 'U:' .. resource))
  if limit and (now or '0') == period then
    local settled = (tonumber(used) or 0) - tonumber(amount) + tonumber(actual)
    if settled < 0 then settled = 0 end
    redis.call('HSET', key, 'U:' .. resource, string.format('%.17g', settled))
    f[i + 2] = actual
  end
end
redis.call('HSET', KEYS[1], ARGV[1], table.concat(f, '\0'))
return 1
