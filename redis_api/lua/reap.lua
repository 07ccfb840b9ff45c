-- Run by every hub every reap_interval_s; idempotent, so any number of hubs may run it at once.
-- ARGV prefix, ttl_ms, batch. Requeues (or kills) jobs whose lease expired, ends jobs past
-- their timeout, and drops expired finished jobs from the indexes.
-- Returns {requeued, dead, {timed-out job, worker, token, ...}, {expired job ids...}}.
local ttl_ms, batch = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local requeued, dead, timed_out, expired = 0, 0, {}, {}

for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'running', '-inf', now, 'LIMIT', 0, batch)) do
  local j = redis.call('HMGET', jkey(id), 'status', 'worker_id', 'token')
  if j[1] == 'running' then
    publish_cancel(j[2], id, j[3], 'lease_expired')
    local err = {type = 'lease_expired', message = 'the worker stopped renewing its lease'}
    local status = retry_or_end(id, now, ttl_ms, 'lease_expired', err, true)
    if status == 'queued' then requeued = requeued + 1 else dead = dead + 1 end
  else
    redis.call('ZREM', P .. 'running', id)
  end
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'deadlines', '-inf', now, 'LIMIT', 0, batch)) do
  local j = redis.call('HMGET', jkey(id), 'status', 'worker_id', 'token', 'timeout_s')
  if j[1] == 'running' then
    local err = {type = 'timed_out', message = 'the job ran longer than its timeout of ' .. j[4] .. ' s'}
    publish_cancel(j[2], id, j[3], 'timed_out')
    end_attempt(id, now, 'timed_out', err)
    finish(id, 'timed_out', now, ttl_ms, err)
    timed_out[#timed_out + 1] = id
    timed_out[#timed_out + 1] = j[2] or ''
    timed_out[#timed_out + 1] = j[3] or ''
  else
    redis.call('ZREM', P .. 'deadlines', id)
  end
end

for _, status in ipairs({'succeeded', 'failed', 'cancelled', 'timed_out', 'dead'}) do
  local zkey = P .. 'done:' .. status
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'LIMIT', 0, batch)) do
    redis.call('ZREM', zkey, id)
    local idem = redis.call('HGET', jkey(id), 'idempotency_key')
    if idem and idem ~= '' and redis.call('GET', P .. 'idem:' .. idem) == id then
      redis.call('DEL', P .. 'idem:' .. idem)
    end
    redis.call('DEL', jkey(id), ekey(id), wfkey(id))
    redis.call('ZREM', P .. 'ids', id)
    expired[#expired + 1] = id
  end
end
-- Idle entries of workers whose hub stopped refreshing them (the hub died) go too.
redis.call('ZREMRANGEBYSCORE', P .. 'idle', '-inf', now)
return {requeued, dead, timed_out, expired}
