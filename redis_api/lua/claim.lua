-- A ready worker asks for a job: ARGV prefix, worker_id, lease_ms, scan_limit.
-- Returns {1, job_id, token, attempt, timeout_s, workflow, enqueued_ms, now_ms} on a claim,
-- {0} when the queue is empty, {2} when nothing queued fits this worker. Without a claim the
-- worker is recorded as idle (until lease_ms from now; its hub refreshes that while it waits).
local worker, lease_ms, scan = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local wk = wkey(worker)
local caps = redis.call('HMGET', wk, unpack(WORKER_CAPS))

-- A worker asking for work holds none: a job still recorded as its own was lost with it.
local held = redis.call('HGET', wk, 'current_job')
if held and held ~= '' then
  local j = redis.call('HMGET', jkey(held), 'status', 'worker_id')
  if j[1] == 'running' and j[2] == worker then
    redis.call('ZADD', P .. 'running', now, held)  -- the reaper requeues it now
  end
  redis.call('HSET', wk, 'current_job', '')
end

-- Is another idle worker able to run this job? (Then the worker it avoids leaves it alone.)
local function other_idle_fits(c_machine, c_gpu, c_vram)
  for _, other in ipairs(redis.call('ZRANGEBYSCORE', P .. 'idle', now, '+inf', 'LIMIT', 0, 100)) do
    if other ~= worker and fits(c_machine, c_gpu, c_vram, redis.call('HMGET', wkey(other), unpack(WORKER_CAPS))) then
      return true
    end
  end
  return false
end

local ids = redis.call('ZRANGE', P .. 'queue', 0, scan - 1)
if #ids == 0 then
  redis.call('ZADD', P .. 'idle', now + lease_ms, worker)
  redis.call('HSET', wk, 'state', 'idle')
  return {0}
end
for _, id in ipairs(ids) do
  local j = redis.call('HMGET', jkey(id), 'c_machine', 'c_gpu', 'c_vram', 'avoid_worker', 'status')
  if j[5] ~= 'queued' then
    redis.call('ZREM', P .. 'queue', id)  -- defensive: only queued jobs belong here
  elseif fits(j[1], j[2], j[3], caps) and not (j[4] == worker and other_idle_fits(j[1], j[2], j[3])) then
    local key = jkey(id)
    local token = redis.call('INCR', P .. 'seq')
    local attempt = redis.call('HINCRBY', key, 'attempts', 1)
    local f = redis.call('HMGET', key, 'timeout_s', 'workflow', 'enqueued_ms')
    redis.call('HSET', key, 'status', 'running', 'token', token, 'worker_id', worker,
      'started_ms', now, 'progress', '', 'prompt_id', '')
    redis.call('ZREM', P .. 'queue', id)
    redis.call('ZADD', P .. 'running', now + lease_ms, id)
    redis.call('ZADD', P .. 'deadlines', now + math.floor(tonumber(f[1]) * 1000), id)
    redis.call('ZREM', P .. 'idle', worker)
    redis.call('HSET', wk, 'current_job', id, 'state', 'busy')
    event(id, 'status', {status = 'running', worker_id = worker, attempt = attempt})
    return {1, id, token, attempt, f[1], f[2], tonumber(f[3]), now}
  end
end
redis.call('ZADD', P .. 'idle', now + lease_ms, worker)
redis.call('HSET', wk, 'state', 'idle')
return {2}
