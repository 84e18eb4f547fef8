-- A retryable tool raised: count the retry against the task's token, in Redis, and give the step's start
-- back for it, unless the call has had all the retries the settings allow (the failure is then final: the
-- caller fails the step for good, which drops the start with the failure recorded, never a moment between).
-- The count is Redis's, not the message's: a broker writer's copy of a signed task (the token signs the
-- kwargs, not the headers) may claim any ``retries`` count, to make a transient failure final, or restart
-- the count, to run a failing call more often than the settings allow.
-- Safe to ask again after a lost connection: asked again under the same receipt, it gives its first answer.
-- KEYS[1] the step's retry counts (hash: token -> retries so far; 'r:' .. receipt -> that ask's answer),
-- KEYS[2] its started marker, KEYS[3] its heartbeat
-- ARGV[1] the task's token, ARGV[2] a receipt (one per failure of a handling),
-- ARGV[3] the retries allowed, ARGV[4] how long the counts are kept (seconds)
-- Returns the retry's number (1..allowed), or 0 when the call has had its retries.
local asked = redis.call('HGET', KEYS[1], 'r:' .. ARGV[2])
if asked then
  return tonumber(asked)
end
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local answer = n
if n > tonumber(ARGV[3]) then
  answer = 0
else
  redis.call('DEL', KEYS[2], KEYS[3])
end
redis.call('HSET', KEYS[1], 'r:' .. ARGV[2], answer)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return answer
