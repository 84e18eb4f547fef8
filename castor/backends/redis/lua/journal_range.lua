-- Read a range of one run's own journal records in one call.
-- KEYS[1] the run's journal hash
-- ARGV[1] first step, ARGV[2] last step (inclusive)
-- Returns the records' JSON joined by commas (the body of a JSON array), stopping at the first hole.
local fields = {}
for step = tonumber(ARGV[1]), tonumber(ARGV[2]) do
  fields[#fields + 1] = tostring(step)
end
if #fields == 0 then
  return ''
end
local values = redis.call('HMGET', KEYS[1], unpack(fields))
local out = {}
for i = 1, #values do
  if not values[i] then
    break
  end
  out[i] = values[i]
end
return table.concat(out, ',')
