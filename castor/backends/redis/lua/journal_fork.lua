-- Start a run's journal as a fork: its first `at` steps are its parent's, referred to, not copied.
-- KEYS[1] the child's journal meta hash, KEYS[2] the child's journal hash
-- ARGV[1] parent run id, ARGV[2] at
-- Returns 1 forked (or forked so already), 0 the child has a journal of its own.
local meta = redis.call('HMGET', KEYS[1], 'parent', 'at')
if meta[1] or redis.call('EXISTS', KEYS[2]) == 1 then
  if meta[1] == ARGV[1] and meta[2] == ARGV[2] then
    return 1
  end
  return 0
end
redis.call('HSET', KEYS[1], 'parent', ARGV[1], 'at', ARGV[2], 'len', ARGV[2])
return 1
