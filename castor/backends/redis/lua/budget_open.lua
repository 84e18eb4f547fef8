-- Set a run's ledger: its limits and what it used so far, replacing any ledger it had.
-- KEYS[1] run ledger; ARGV: field, value pairs (`L:<resource>` limit, `U:<resource>` used)
redis.call('DEL', KEYS[1])
if #ARGV > 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV))
end
return 1
