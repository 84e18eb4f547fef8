-- Set every resource's usage of a scope back to zero (limits kept).
-- KEYS[1] the scope's ledger
-- A new period starts (`R`): charges taken before are spent, a refund of one gives nothing back.
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'R', 1)
end
local fields = redis.call('HKEYS', KEYS[1])
for _, field in ipairs(fields) do
  if string.sub(field, 1, 2) == 'U:' then
    redis.call('HSET', KEYS[1], field, 0)
  end
end
return 1
