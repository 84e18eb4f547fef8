-- Claim a step for execution: KEYS[1] = the step's started marker, ARGV[1] = attempt, ARGV[2] = ttl (s).
-- No marker, or one of an earlier approval round: this attempt starts (marker set) and -1 is returned.
-- Otherwise the marker is left alone and its attempt returned: the step was started before (in doubt,
-- or a newer round owns it).
local old = redis.call('GET', KEYS[1])
if (not old) or tonumber(old) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return -1
end
return tonumber(old)
