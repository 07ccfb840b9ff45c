-- Run by every hub at the earliest deadline it knows of (and at least every reap_interval_s);
-- idempotent, so any number of hubs may run it at once.
-- ARGV prefix, ttl_ms, batch, stale_ms, pool_idle_ms (< 0: no pool sweep this round), whether
-- to look at finished jobs ('1'). Requeues (or kills) jobs whose lease expired, ends jobs past
-- their timeout, queued jobs past their queue deadline (`expired`) or with no worker able to take
-- them past their schedule timeout (`unschedulable`), drops pools empty for pool_idle_ms (and idle
-- entries no hub refreshed), and drops expired finished jobs from the indexes.
-- Returns {requeued, dead, {timed-out job, worker, token, ...}, {expired job ids...},
-- ended_in_queue, next_ms, done_next_ms}: how long until the earliest deadline of the running and
-- queued jobs, and of the finished ones (0: some were due, look again at once, as more may be
-- due than one batch; -1: none at all; -2: not looked at).
local ttl_ms, batch = tonumber(ARGV[2]), tonumber(ARGV[3])
local stale_ms, pool_idle_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local look_at_done = ARGV[6] == '1'
local now = now_ms()
local requeued, dead, timed_out, expired, ended = 0, 0, {}, {}, 0
local soonest = {}  -- per kind ('jobs', 'done'): the earliest deadline seen (now: some were due)

-- The members of `zkey` due now (at most `batch`); one read when none is: its first score, which
-- is also when to look next.
local function due(zkey, kind)
  local first = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')
  if #first == 0 then return {} end
  local at = math.max(tonumber(first[2]), now)
  if soonest[kind] == nil or at < soonest[kind] then soonest[kind] = at end
  if at > now then return {} end
  return redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'LIMIT', 0, batch)
end

local function until_ms(kind)
  return soonest[kind] and soonest[kind] - now or -1
end

for _, id in ipairs(due(P .. 'qdeadlines', 'jobs')) do
  redis.call('ZREM', P .. 'qdeadlines', id)
  local j = redis.call('HMGET', jkey(id), 'status', 'attempts', 'queue_ms')
  if j[1] == 'queued' and tonumber(j[2]) == 0 then
    finish(id, 'expired', now, ttl_ms, {type = 'expired',
      message = 'the job did not start within its queue_timeout_s of ' .. (tonumber(j[3]) or 0) / 1000 .. ' s'})
    ended = ended + 1
  end
end

local reasons = {}
for _, id in ipairs(due(P .. 'schedcheck', 'jobs')) do
  local j = redis.call('HMGET', jkey(id), 'status', 'pool', 'sched_ms')
  if j[1] ~= 'queued' then
    redis.call('ZREM', P .. 'schedcheck', id)
  else
    local pid = j[2] or ''
    if reasons[pid] == nil then reasons[pid] = why_waiting(pid, now, stale_ms) end
    if reasons[pid] ~= '' then
      redis.call('ZREM', P .. 'schedcheck', id)
      finish(id, 'unschedulable', now, ttl_ms, {type = 'unschedulable', message = reasons[pid] ..
        ' (waited its schedule_timeout_s of ' .. (tonumber(j[3]) or 0) / 1000 .. ' s)'})
      ended = ended + 1
    else
      redis.call('ZADD', P .. 'schedcheck', now + (tonumber(j[3]) or 60000), id)  -- look again later
    end
  end
end

if pool_idle_ms >= 0 then
  gc_pools(now, pool_idle_ms, 20)
  -- Idle entries of workers whose hub stopped refreshing them (the hub died) go too (each
  -- reader already ignores an entry past its time).
  redis.call('ZREMRANGEBYSCORE', P .. 'idle', '-inf', now)
end

for _, id in ipairs(due(P .. 'running', 'jobs')) do
  local j = redis.call('HMGET', jkey(id), 'status', 'worker_id', 'token')
  if HELD[j[1]] then
    publish_cancel(j[2], id, j[3], 'lease_expired')
    local err = {type = 'lease_expired', message = 'the worker stopped renewing its lease'}
    local status = retry_or_end(id, now, ttl_ms, 'lease_expired', err, true)
    if status == 'queued' then requeued = requeued + 1 else dead = dead + 1 end
  else
    redis.call('ZREM', P .. 'running', id)
  end
end

for _, id in ipairs(due(P .. 'deadlines', 'jobs')) do
  local j = redis.call('HMGET', jkey(id), 'status', 'worker_id', 'token', 'timeout_s')
  if HELD[j[1]] then
    -- One outcome whoever notices first: the worker's own deadline ends it the same way (fail.lua).
    local err = {type = 'timeout', message = 'the job ran longer than its timeout of ' .. j[4] .. ' s'}
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

local statuses = {'succeeded', 'failed', 'cancelled', 'timed_out', 'dead', 'unschedulable',
  'expired'}
for _, status in ipairs(look_at_done and statuses or {}) do
  local zkey = P .. 'done:' .. status
  for _, id in ipairs(due(zkey, 'done')) do
    redis.call('ZREM', zkey, id)
    local idem = redis.call('HGET', jkey(id), 'idempotency_key')
    if idem and idem ~= '' and redis.call('GET', P .. 'idem:' .. idem) == id then
      redis.call('DEL', P .. 'idem:' .. idem)
    end
    redis.call('DEL', jkey(id), ekey(id), wfkey(id))
    redis.call('ZREM', P .. 'ids', id)
    redis.call('ZREM', P .. 'schedcheck', id)
    redis.call('ZREM', P .. 'qdeadlines', id)
    expired[#expired + 1] = id
  end
end
return {requeued, dead, timed_out, expired, ended, until_ms('jobs'),
  look_at_done and until_ms('done') or -2}
