-- The outcome of one webhook delivery attempt: ARGV prefix, delivery, claim token, outcome,
-- http status ('' if none), delay_ms (retry/defer), error text.
-- outcome: delivered | retry | gave_up (attempt counted) | defer (not counted: breaker or
-- per-destination limit). The job's `wh_*` fields describe its final-event delivery.
-- Returns 'ok', or 'stale' when another hub has claimed the delivery since.
local delivery, claim, outcome = ARGV[2], ARGV[3], ARGV[4]
local status, delay_ms, err = ARGV[5], tonumber(ARGV[6]) or 0, ARGV[7]
local dkey = P .. 'wh:' .. delivery
local d = redis.call('HMGET', dkey, 'job', 'event', 'attempts', 'claim')
if not d[1] or d[4] ~= claim then return 'stale' end
local now = now_ms()
local attempts = tonumber(d[3]) or 0
if outcome ~= 'defer' then attempts = attempts + 1 end
local fields = {'wh_attempts', attempts, 'wh_last_status', status, 'wh_error', err}
if outcome == 'delivered' or outcome == 'gave_up' then
  redis.call('ZREM', P .. 'wh:due', delivery)
  redis.call('DEL', dkey)
  fields[#fields + 1] = 'wh_next_ms'
  fields[#fields + 1] = ''
  if outcome == 'delivered' then
    fields[#fields + 1] = 'wh_delivered_ms'
    fields[#fields + 1] = now
  end
else
  redis.call('HSET', dkey, 'attempts', attempts, 'claim', '')
  redis.call('ZADD', P .. 'wh:due', now + delay_ms, delivery)
  fields[#fields + 1] = 'wh_next_ms'
  fields[#fields + 1] = now + delay_ms
  if outcome == 'defer' then fields = {'wh_next_ms', now + delay_ms} end
end
-- HSET on an expired job would recreate it without a TTL: only touch a job that exists.
if d[2] ~= 'job.progress' and redis.call('EXISTS', jkey(d[1])) == 1 then
  redis.call('HSET', jkey(d[1]), unpack(fields))
end
return 'ok'
