-- Fail a step for good: its tool raised and is not retried. In one call, record the failure, drop the
-- step's start and heartbeat (a resume of the failed run may start it afresh), keep the task's token
-- spent (a copy of the task read off the broker is refused unrun) and reply on the coordinator's stream.
-- A delivery waiting on this worker that finds the start free finds the failure with it, never a moment
-- between; and the reply can never precede the record.
-- Safe to ask again after a lost connection, by the token: a failure recorded under it is not recorded
-- twice (the reply goes out again; the coordinator reads the first). An unsigned task has no token and
-- is asked once.
-- KEYS[1] the run's failures, KEYS[2] the step's started marker, KEYS[3] its heartbeat, KEYS[4] its spent
-- tokens, KEYS[5] the run's journal, KEYS[6] the reply stream (absent: nobody to reply to)
-- ARGV[1] the failure (JSON), ARGV[2] the task's token ('' when unsigned), ARGV[3] how long a spent token
-- is kept (seconds), ARGV[4] the step, to fail it only while its start is free and its journal does not
-- hold it ('' to fail it in any case); with a reply stream, ARGV[5] its approximate max length, ARGV[6..]
-- the reply's fields
-- Returns 1 recorded, 2 recorded before under this token, 0 nothing done: the step was to be free and
-- another delivery holds or has finished it (a retry that could not be sent, its start given back for it,
-- and a copy of the task took the start meanwhile: that copy runs the call and answers it).
local recorded = 1
if ARGV[2] ~= '' and redis.call('SISMEMBER', KEYS[4], ARGV[2]) == 1 then
  recorded = 2
elseif ARGV[4] ~= '' and (redis.call('EXISTS', KEYS[2]) == 1
    or redis.call('ZRANGEBYSCORE', KEYS[5], ARGV[4], ARGV[4], 'LIMIT', 0, 1)[1]) then
  return 0
else
  redis.call('RPUSH', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2], KEYS[3])
  if ARGV[2] ~= '' then
    redis.call('SADD', KEYS[4], ARGV[2])
    redis.call('EXPIRE', KEYS[4], ARGV[3])
  end
end
if KEYS[6] then
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[5], '*', unpack(ARGV, 6))
end
return recorded
