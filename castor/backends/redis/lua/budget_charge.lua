-- Check a call's cost against the run's ledger and every scope, and charge all of them or none.
-- KEYS[1] run ledger, KEYS[2] run charges, KEYS[3] reservation index,
-- KEYS[4] the run's lease key (KEYS[1] again when not fenced), KEYS[5..] scope ledgers
-- ARGV[1] step, ARGV[2] 'charge' or 'check', ARGV[3] fencing token or '', ARGV[4] holder,
-- ARGV[5] when the holder's claim ends (unix time), ARGV[6] reservation member, ARGV[7] n resources,
-- ARGV[8 .. 7+2n] resource, amount pairs
-- Ledgers are hashes of `L:<resource>` (limit) and `U:<resource>` (used); a resource without a limit is free.
-- Returns {1} charged (or charged before: a step is charged once), or
-- {0, which ledger was short (1: the run's, 2..: the scopes in order), resource, what is left}.
if ARGV[3] ~= '' then
  local holder = redis.call('GET', KEYS[4])
  if holder ~= ARGV[3] then
    return redis.error_reply('CASTOR_STALE_LEASE the lease is held by ' .. (holder or 'nobody'))
  end
end
local n = tonumber(ARGV[7])
if n == 0 then
  return {1} -- nothing to take (the caller only needed the fence checked): no record
end
local charge = ARGV[2] == 'charge'
if charge and redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return {1}
end
local ledgers = {KEYS[1]}
for i = 5, #KEYS do
  ledgers[#ledgers + 1] = KEYS[i]
end
local taken = {}
for li = 1, #ledgers do
  for r = 0, n - 1 do
    local resource = ARGV[8 + 2 * r]
    local amount = tonumber(ARGV[9 + 2 * r])
    local entry = redis.call('HMGET', ledgers[li], 'L:' .. resource, 'U:' .. resource)
    if entry[1] then
      local limit = tonumber(entry[1])
      local used = tonumber(entry[2]) or 0
      if used + amount > limit + 1e-9 then
        local left = limit - used
        if left < 0 then left = 0 end
        return {0, li, resource, tostring(left)}
      end
      taken[#taken + 1] = {li, resource, ARGV[9 + 2 * r]} -- the exact decimal the caller sent
    end
  end
end
if not charge then
  return {1}
end
for _, t in ipairs(taken) do
  redis.call('HINCRBYFLOAT', ledgers[t[1]], 'U:' .. t[2], t[3])
end
-- The record says where the charge went, so a refund or a sweep can give back exactly that.
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode({h = ARGV[4], e = tonumber(ARGV[5]), m = ARGV[6], k = ledgers, t = taken}))
if #taken > 0 then
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[6])
end
return {1}
