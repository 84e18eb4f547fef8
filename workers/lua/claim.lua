-- Claim a step for execution, in one step with the journal: no two deliveries can both execute it.
-- KEYS[1] the step's started marker, KEYS[2] the run's journal (sorted set of records scored by step)
-- ARGV[1] step, ARGV[2] attempt (approval round), ARGV[3] marker ttl (s)
-- Returns {'done', record JSON} when the journal already holds the step: whatever round this is,
--   the step finished, and its record is the result (nothing is marked);
-- {'run'} when there is no marker or only one of an earlier approval round: this attempt starts
--   (marker set);
-- {'started', attempt} otherwise, the marker left alone: the step was started before and never
--   finished (in doubt), or a newer round owns it.
local record = redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[1], ARGV[1])[1]
if record then
  return {'done', record}
end
local old = redis.call('GET', KEYS[1])
if (not old) or tonumber(old) < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return {'run'}
end
return {'started', old}
