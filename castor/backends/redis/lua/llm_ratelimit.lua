-- One model key's requests-per-minute and tokens-per-minute limits, as a sliding window on the server's clock.
-- KEYS[1] the window (sorted set: reservation id -> ms it was taken), KEYS[2] amounts (hash: reservation id ->
-- tokens, and '=sum' their total), KEYS[3] the pause (a key that exists while the provider asked us to wait),
-- KEYS[4] the line's head: '<since>:<reservation id>' of the longest-waiting caller, while it keeps asking
-- ARGV[1] 'acquire' | 'settle' | 'pause' | 'leave'
--   acquire: ARGV[2] reservation id, ARGV[3] tokens, ARGV[4] rpm, ARGV[5] tpm (0: no limit), ARGV[6] window ms,
--     ARGV[7] since (ms this caller was first refused; 0: never), ARGV[8] ms the head keeps its place unasked
--     -> {1, now ms} taken, or {0, ms to wait, 'paused' | 'rpm' | 'tpm' | 'line', since};
--     {0, -1, 'tpm', 0}: more than the limit
--   settle: ARGV[2] reservation id, ARGV[3] the tokens the provider reported -> the change (0: expired already)
--   pause: ARGV[2] ms -> the ms the key is paused for now (a shorter pause never cuts a longer one)
--   leave: ARGV[2] reservation id of a caller that gives up -> 1 if it was the line's head (dropped)
-- A reservation is in the window while taken > now - window: no window of that length ever holds more.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[1]

if op == 'pause' then
  local ms = tonumber(ARGV[2])
  local left = redis.call('PTTL', KEYS[3])
  if left < ms then
    redis.call('SET', KEYS[3], now + ms, 'PX', ms)
    return ms
  end
  return left
end

if op == 'leave' then
  local head = redis.call('GET', KEYS[4])
  if head and string.sub(head, string.find(head, ':', 1, true) + 1) == ARGV[2] then
    redis.call('DEL', KEYS[4])
    return 1
  end
  return 0
end

if op == 'settle' then
  local old = redis.call('HGET', KEYS[2], ARGV[2])
  if not old then
    return 0 -- out of the window already: what it really cost no longer counts
  end
  local delta = tonumber(ARGV[3]) - tonumber(old)
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  redis.call('HINCRBY', KEYS[2], '=sum', delta)
  return delta
end

local paused = redis.call('PTTL', KEYS[3])
if paused > 0 then
  return {0, paused, 'paused', tonumber(ARGV[7])}
end
local id, tokens = ARGV[2], tonumber(ARGV[3])
local rpm, tpm, window = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if tpm > 0 and tokens > tpm then
  return {0, -1, 'tpm', 0}
end

-- Drop what left the window (in chunks: unpack() has a limit), taking its tokens off the total.
local cutoff = now - window
while true do
  local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, 500)
  if #gone == 0 then
    break
  end
  local freed = 0
  for _, amount in ipairs(redis.call('HMGET', KEYS[2], unpack(gone))) do
    freed = freed + (tonumber(amount) or 0)
  end
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('HDEL', KEYS[2], unpack(gone))
  if freed ~= 0 then -- -freed of 0 is -0, which HINCRBY refuses as no integer
    redis.call('HINCRBY', KEYS[2], '=sum', 0 - freed)
  end
end

local count = redis.call('ZCARD', KEYS[1])
local sum = tonumber(redis.call('HGET', KEYS[2], '=sum') or '0')
local wait, reason = 0, ''
if rpm > 0 and count >= rpm then
  -- the request that must leave first: the (count - rpm + 1)th oldest
  local oldest = redis.call('ZRANGE', KEYS[1], count - rpm, count - rpm, 'WITHSCORES')
  wait, reason = tonumber(oldest[2]) + window - now, 'rpm'
end
if tpm > 0 and sum + tokens > tpm then
  -- walk from the oldest until enough tokens have left the window (only when refusing)
  local need, freed, start = sum + tokens - tpm, 0, 0
  local at = nil
  while at == nil do
    local rows = redis.call('ZRANGE', KEYS[1], start, start + 199, 'WITHSCORES')
    if #rows == 0 then
      break
    end
    local ids = {}
    for i = 1, #rows, 2 do
      ids[#ids + 1] = rows[i]
    end
    local amounts = redis.call('HMGET', KEYS[2], unpack(ids))
    for i, amount in ipairs(amounts) do
      freed = freed + (tonumber(amount) or 0)
      if freed >= need then
        at = tonumber(rows[2 * i])
        break
      end
    end
    start = start + 200
  end
  local tpm_wait = (at or now) + window - now
  if tpm_wait > wait then
    wait, reason = tpm_wait, 'tpm'
  end
end

-- First come, first served across processes: a caller refused earlier than this one, still asking, goes first.
local since = tonumber(ARGV[7])
if since == 0 then
  since = now
end
local head = redis.call('GET', KEYS[4])
local first = true
if head then
  local colon = string.find(head, ':', 1, true)
  local head_since, head_id = tonumber(string.sub(head, 1, colon - 1)), string.sub(head, colon + 1)
  first = head_id == id or since < head_since
end
if wait > 0 or not first then
  if first then
    redis.call('SET', KEYS[4], since .. ':' .. id, 'PX', tonumber(ARGV[8]))
  elseif wait <= 0 then
    wait, reason = 100, 'line' -- room now, but for the caller ahead: it asks again within a poll
  end
  return {0, wait, reason, since}
end
if head then
  redis.call('DEL', KEYS[4]) -- the head's turn came
end

redis.call('ZADD', KEYS[1], now, id)
redis.call('HSET', KEYS[2], id, tokens)
redis.call('HINCRBY', KEYS[2], '=sum', tokens)
redis.call('PEXPIRE', KEYS[1], window + 1000)
redis.call('PEXPIRE', KEYS[2], window + 1000)
return {1, now}
