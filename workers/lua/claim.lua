-- Claim a step for execution, in one step with the journal: no two deliveries can both execute it.
-- KEYS[1] the step's started marker, KEYS[2] the run's journal (sorted set of records scored by step),
-- KEYS[3] the step's deliveries (hash: task message id -> '<receipt>:<what its claim returned>'),
-- KEYS[4] the step's abandoned tasks (set of task ids their coordinator gave up on),
-- KEYS[5] the step's heartbeat (string: the running worker's id, with a short TTL its worker keeps renewing)
-- ARGV[1] attempt (approval round), ARGV[2] marker ttl (s), ARGV[3] step,
-- ARGV[4] the task message's id ('' when unknown: no duplicate check), ARGV[5] '1' if the broker redelivers it,
-- ARGV[6] the task's id ('' when unknown), ARGV[7] the receipt: the worker's id for this one handling of
-- the message (a claim asked again with it, its first reply lost, gets the first answer again),
-- ARGV[8] the worker's id, ARGV[9] the heartbeat's ttl (ms); KEYS[6] the step's spent tokens (set),
-- ARGV[10] the task's token ('' for none); KEYS[7] the run's failures (list), optional; KEYS[8] the run's
-- header (hash), optional: its 'stopped' field says why a stopped run stopped
-- Returns -2 when the journal holds the step already: whatever round or copy this is, the step finished
--   and its record is the result (nothing is marked);
-- -4 when the coordinator gave up on this task before any worker took it (nothing is marked);
-- -6 when a task with this token ran before and failed for good: a copy sent again (nothing is marked);
-- -3 when this is another copy of a message a worker took already, and no redelivery: a publish retried
--   after its first try landed. The copy taken first runs the step and answers; this one does nothing;
-- -5 (running) when a live worker runs the step (its heartbeat is there) in this round or an earlier one:
--   nothing is marked or recorded, the caller waits and asks again (a coordinator that took the run
--   over sends the step again while the first worker still runs it); with KEYS[7], {-5, the length of
--   the run's failures}: a failure the running worker records for good (with its start dropped, in one
--   transaction) stands after that index, so the caller tells it from the failures before;
-- -7 when this attempt would start the step of a run an operator cancelled (KEYS[8]): a task left on a
--   queue (its coordinator died, or withdrew it too late) runs nothing after the cancel (nothing is marked);
-- -1 when there is no marker, or one of an earlier approval round: this attempt starts (marker and
--   heartbeat set);
-- else the marker's attempt, the marker left alone: the step was started before and never finished (in
--   doubt), or a newer round owns it.
if redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[3], ARGV[3], 'LIMIT', 0, 1)[1] then
  return -2
end
if ARGV[6] ~= '' and redis.call('SISMEMBER', KEYS[4], ARGV[6]) == 1 then
  return -4
end
if KEYS[6] and ARGV[10] and ARGV[10] ~= '' and redis.call('SISMEMBER', KEYS[6], ARGV[10]) == 1 then
  return -6
end
if ARGV[4] ~= '' then
  local held = redis.call('HGET', KEYS[3], ARGV[4])
  if held then
    local receipt, answer = string.match(held, '^(.*):(-?%d+)$')
    if receipt == ARGV[7] then
      return tonumber(answer) -- this very handling claimed already; its reply was lost
    end
    if ARGV[5] ~= '1' then
      return -3
    end
  end
end
local old = redis.call('GET', KEYS[1])
if old and tonumber(old) <= tonumber(ARGV[1]) and redis.call('EXISTS', KEYS[5]) == 1 then
  if KEYS[7] then
    return {-5, redis.call('LLEN', KEYS[7])}
  end
  return -5
end
local answer
if (not old) or tonumber(old) < tonumber(ARGV[1]) then
  if KEYS[8] and redis.call('HGET', KEYS[8], 'stopped') == 'cancelled' then
    return -7
  end
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  redis.call('SET', KEYS[5], ARGV[8], 'PX', ARGV[9])
  answer = -1
else
  answer = tonumber(old)
end
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[7] .. ':' .. answer)
  redis.call('EXPIRE', KEYS[3], ARGV[2])
end
return answer
