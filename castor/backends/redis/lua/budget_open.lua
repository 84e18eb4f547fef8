-- Set a run's ledger: its limits and what it used so far, replacing any ledger it had.
-- KEYS[1] run ledger; ARGV: field, value pairs (`L:<resource>` limit, `U:<resource>` used)
-- The new ledger starts a new period (`R`, from Redis's clock, never the one it replaced): a charge the old
-- ledger took is spent, and refunding it later gives nothing back to this one.
local t = redis.call('TIME')
local period = t[1] .. '.' .. t[2]
if redis.call('HGET', KEYS[1], 'R') == period then
  period = period .. '+'
end
redis.call('DEL', KEYS[1])
if #ARGV > 0 then
  redis.call('HSET', KEYS[1], 'R', period, unpack(ARGV))
end
return 1
