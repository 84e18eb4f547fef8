-- Hand a stored run to the coordinators once: mark it submitted and queue it in one step, so two
-- submitters of one run (two forkers at one step) never queue it twice, and none stops between the two.
-- KEYS[1] the submitted set, KEYS[2] the run queue; ARGV[1] pid
-- Returns 1 queued, 0 submitted already (nothing done).
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('LPUSH', KEYS[2], ARGV[1])
return 1
