-- Set every resource's usage of a scope back to zero (limits kept).
-- KEYS[1] the scope's ledger
local fields = redis.call('HKEYS', KEYS[1])
for _, field in ipairs(fields) do
  if string.sub(field, 1, 2) == 'U:' then
    redis.call('HSET', KEYS[1], field, 0)
  end
end
return 1
