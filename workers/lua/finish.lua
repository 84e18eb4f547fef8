-- Finish a step: journal its record write-once (castor's journal_append.lua, inlined above this part as
-- the function `append`), then, unless another record holds the step, reply on the coordinator's stream
-- in the same call: the reply can never precede the record, and the worker pays one round trip.
-- The step's started marker and its deliveries go with it: once the journal holds the step, a claim
-- answers every later delivery from the record without looking at them.
-- KEYS[1..3] as journal_append.lua; KEYS[4] the step's started marker, KEYS[5] its deliveries,
-- KEYS[6] its heartbeat; KEYS[7] the reply stream (absent: nobody to reply to)
-- ARGV[1..3] as journal_append.lua; ARGV[4] the stream's approximate max length; ARGV[5..] reply fields
-- Returns what journal_append returns (1 written, 2 written before, 0 another record holds the step).
local written = append()
if type(written) == 'table' then
  return written -- an error reply (stale lease)
end
if written ~= 0 then
  redis.call('DEL', KEYS[4], KEYS[5], KEYS[6])
  if KEYS[7] then
    redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 5))
  end
end
return written
