-- Check a call's cost against the run's ledger and every scope, and charge all of them or none.
-- KEYS[1] the run's ledger '<prefix>:{<run>}:budget', KEYS[2] the reservation index, KEYS[3 ..] the scopes'
-- ledgers, and last, only when a fencing token is given, the run's lease key
-- ARGV[1] the fencing token ('' for an unfenced call), ARGV[2] step ('' to check without charging),
-- ARGV[3] holder, ARGV[4] when the holder's claim ends (unix time), then resource, amount pairs.
-- (Arguments of their own, not one joined string: splitting a string in Lua costs Redis more than the
-- arguments do, and Redis's time is what every process of the fleet shares.)
-- Ledgers are hashes of `L:<resource>` (limit) and `U:<resource>` (used); a resource without a limit is free.
-- `R` is the ledger's period: a reset (scope) or a reopening (run) changes it, and a refund gives back only
-- to the period it took from.
-- The run's charge records live in '<prefix>:{<run>}:charges', named here from KEYS[1]: the same hash tag,
-- so the same Cluster slot, and one key fewer to send on every charge.
-- A call that costs nothing is sent only for a fenced run, to check the fence.
-- Returns 1 charged (or charged before: a step is charged once), or
-- {0, which ledger was short (1: the run's, 2..: the scopes in order), resource, what is left}.
local last = #KEYS
if ARGV[1] ~= '' then
  local holder = redis.call('GET', KEYS[last])
  if holder ~= ARGV[1] then
    return redis.error_reply('CASTOR_STALE_LEASE the lease is held by ' .. (holder or 'nobody'))
  end
  last = last - 1
end
local f = ARGV
local step, claim, n = f[2], f[4], (#f - 4) / 2
if n == 0 then
  return 1 -- a free call of a fenced run: checking the fence above was the point; nothing to take
end
local fields = {}
for k = 1, n do
  fields[2 * k - 1] = 'L:' .. f[3 + 2 * k]
  fields[2 * k] = 'U:' .. f[3 + 2 * k]
end
-- The charge record: holder, claim end, then ledger, resource, amount, period of every part taken. It is what a
-- refund or a sweep gives back, exactly. The new usage of each ledger is summed here from the read above
-- and written with one HSET per ledger: HINCRBYFLOAT costs Redis twice an HSET, and its long double sums
-- differ from the doubles every other backend (and the refund check) adds with. '%.17g' keeps the double.
local record = {f[3], claim}
local writes = {}
local indexed, run_period
local charges = string.sub(KEYS[1], 1, -7) .. 'charges'
-- A step charged again after the run's ledger was reopened (another process took the run over while the
-- call that took the charge was in flight): the reopened ledger, whose usage came from the journal, counts
-- it now, and the record moves to its period (a refund gives it back there). A step journaled before the
-- reopening is never charged again: replay serves it.
local function carry()
  local old = redis.call('HGET', charges, step)
  if not old or not run_period then
    return
  end
  local parts, from = {}, 1
  while true do
    local at = string.find(old, '\0', from, true)
    if not at then
      parts[#parts + 1] = string.sub(old, from)
      break
    end
    parts[#parts + 1] = string.sub(old, from, at - 1)
    from = at + 1
  end
  local moved = false
  for i = 3, #parts - 3, 4 do
    if parts[i] == KEYS[1] and parts[i + 3] ~= run_period then
      local field = 'U:' .. parts[i + 1]
      local used = tonumber(redis.call('HGET', KEYS[1], field) or '0') + tonumber(parts[i + 2])
      redis.call('HSET', KEYS[1], field, string.format('%.17g', used))
      parts[i + 3] = run_period
      moved = true
    end
  end
  if moved then
    redis.call('HSET', charges, step, table.concat(parts, '\0'))
  end
end
for li = 1, last - 1 do
  local ledger, entry, o = KEYS[1], nil, 0
  if li == 1 then
    -- the run's ledger is read with `I` too: the claim end under which the run is in the reservation index
    entry = redis.call('HMGET', ledger, 'I', 'R', unpack(fields))
    indexed, o = entry[1], 2
  else
    ledger = KEYS[li + 1]
    entry = redis.call('HMGET', ledger, 'R', unpack(fields))
    o = 1
  end
  local period = entry[o] or '0'
  if li == 1 then
    run_period = period
  end
  local sets
  for k = 1, n do
    local limit = entry[o + 2 * k - 1]
    if limit then
      local resource, amount = f[3 + 2 * k], f[4 + 2 * k]
      local prior = tonumber(entry[o + 2 * k]) or 0
      local used = prior + tonumber(amount)
      if used > tonumber(limit) + 1e-9 then
        if step ~= '' and redis.call('HEXISTS', charges, step) == 1 then
          carry()
          return 1 -- charged before: a retried charge succeeds whatever is left now
        end
        local left = tonumber(limit) - prior
        if left < 0 then left = 0 end
        return {0, li, resource, tostring(left)}
      end
      record[#record + 1] = ledger
      record[#record + 1] = resource
      record[#record + 1] = amount -- the exact decimal the caller sent
      record[#record + 1] = period
      if not sets then
        sets = {ledger}
        writes[#writes + 1] = sets
      end
      sets[#sets + 1] = fields[2 * k]
      sets[#sets + 1] = string.format('%.17g', used)
    end
  end
end
if step == '' then
  return 1
end
if redis.call('HSETNX', charges, step, table.concat(record, '\0')) == 0 then
  carry()
  return 1 -- charged before
end
for i = 1, #writes do
  redis.call('HSET', unpack(writes[i]))
end
-- The index holds every run with unsettled charges, scored no later than its earliest claim end. `I` (never
-- below the run's score) says the run is there already, scored no later than this claim: no write needed.
if not indexed or tonumber(claim) < tonumber(indexed) then
  local open = string.find(KEYS[1], '{', 1, true)
  local run = string.sub(KEYS[1], open + 1, -9)
  local score = tonumber(redis.call('ZSCORE', KEYS[2], run))
  if not score or tonumber(claim) < score then
    redis.call('ZADD', KEYS[2], claim, run)
  end
  redis.call('HSET', KEYS[1], 'I', claim)
end
return 1
