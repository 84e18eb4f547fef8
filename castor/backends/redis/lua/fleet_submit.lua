-- Hand a stored run to the coordinators once: mark it submitted and queue it in one step, so two
-- submitters of one run (two forkers at one step) never queue it twice, and none stops between the two.
-- KEYS[1] the submitted set, KEYS[2] the run queue; ARGV[1] pid
-- Returns 1 queued, 0 submitted already (nothing done).
-- With KEYS[3], the run's header hash: a new run, whose header the save script stores right after this
-- one in the same transaction (RedisRunStore.create_submitted). Queued if it has no header yet (the save
-- then creates it); one it has is another's (the save refuses it) or this very one, which the try that
-- stored it queued: nothing done either way. A pid left in the set by a run whose keys expired is queued.
if KEYS[3] then
  if redis.call('EXISTS', KEYS[3]) == 1 then
    return 0
  end
  redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('LPUSH', KEYS[2], ARGV[1])
return 1
