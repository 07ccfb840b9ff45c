-- Accept a job: ARGV prefix, id, priority, timeout_s, max_attempts, workflow, constraints,
-- c_machine, c_gpu, c_vram, idempotency_key, webhook_url, pool, requires (JSON or ''), owner,
-- schedule_timeout_ms, queue_timeout_ms (0 = none), extras (JSON object members sent to the
-- worker with the job, e.g. allow_partial and inputs; '' for none), then the limits max_jobs,
-- max_bytes, max_jobs_per_owner, max_bytes_per_owner (0: none).
-- Returns {job_id, created (1|0), created_ms}, or {'', 0, 0, which limit} when the queue is full.
-- A repeated idempotency key returns the first job (even when the queue is full).
local id, priority, idem = ARGV[2], tonumber(ARGV[3]), ARGV[11]
local pid, requires, owner = ARGV[13], ARGV[14], ARGV[15]
local sched_ms, queue_ms = tonumber(ARGV[16]), tonumber(ARGV[17])
local now = now_ms()
if idem ~= '' then
  local existing = redis.call('GET', P .. 'idem:' .. idem)
  if existing and redis.call('EXISTS', jkey(existing)) == 1 then
    return {existing, 0, tonumber(redis.call('HGET', jkey(existing), 'created_ms')) or now}
  end
end
local bytes = #ARGV[6]
-- Over a limit (0: none, and then nothing is read)? `read` gives the current count.
local function over(limit, read, add)
  limit = tonumber(limit) or 0
  return limit > 0 and (tonumber(read()) or 0) + add > limit
end
if over(ARGV[19], function() return redis.call('ZCARD', P .. 'queue') end, 1) then
  return {'', 0, 0, 'max_queued_jobs'}
end
if over(ARGV[20], function() return redis.call('GET', P .. 'queued_bytes') end, bytes) then
  return {'', 0, 0, 'max_queued_bytes'}
end
if owner ~= '' then
  if over(ARGV[21], function() return redis.call('HGET', P .. 'queued_jobs_by', owner) end, 1) then
    return {'', 0, 0, 'max_queued_jobs_per_key'}
  end
  -- Its stored inputs count too (upload.lua), until they expire.
  if over(ARGV[22], function()
        return (tonumber(redis.call('HGET', P .. 'queued_bytes_by', owner)) or 0) +
          upload_bytes(owner, now)
      end, bytes) then
    return {'', 0, 0, 'max_queued_bytes_per_key'}
  end
end
if idem ~= '' then redis.call('SET', P .. 'idem:' .. idem, id) end
-- Fair share: an owner's jobs take consecutive rounds, starting after the round being served,
-- so a newcomer's job is next to run whatever another owner has queued. Higher priority first;
-- priority is bounded to +-1000 and rounds to 2^42 so the score stays exact.
local fair = redis.call('HMGET', P .. 'fair', 'v', 'o:' .. owner)
local round = math.max(tonumber(fair[1]) or 0, tonumber(fair[2]) or 0) + 1
redis.call('HSET', P .. 'fair', 'o:' .. owner, round)
local score = (1000 - priority) * ROUND + round
local fields = {'id', id, 'status', 'queued', 'priority', priority, 'timeout_s', ARGV[4],
  'max_attempts', ARGV[5], 'attempts', 0, 'score', score,
  'constraints', ARGV[7], 'c_machine', ARGV[8], 'c_gpu', ARGV[9], 'c_vram', ARGV[10],
  'idempotency_key', idem, 'webhook_url', ARGV[12], 'created_ms', now, 'enqueued_ms', now,
  'token', 0, 'worker_id', '', 'avoid_worker', '', 'pool', pid, 'owner', owner,
  'sched_ms', sched_ms, 'wf_bytes', bytes}
-- Only jobs that need models carry them: the others keep the hash small.
if requires ~= '' then
  fields[#fields + 1] = 'requires'
  fields[#fields + 1] = requires
end
if queue_ms > 0 then
  fields[#fields + 1] = 'queue_ms'
  fields[#fields + 1] = queue_ms
end
redis.call('HSET', jkey(id), unpack(fields))
redis.call('SET', wfkey(id), ARGV[6])
if ARGV[18] and ARGV[18] ~= '' then redis.call('HSET', jkey(id), 'extras', ARGV[18]) end
place(id, score, now, {pid, owner, requires, ARGV[8], ARGV[9], ARGV[10], bytes})
if sched_ms > 0 then redis.call('ZADD', P .. 'schedcheck', now + sched_ms, id) end
if queue_ms > 0 then redis.call('ZADD', P .. 'qdeadlines', now + queue_ms, id) end
redis.call('ZADD', P .. 'ids', 0, id)  -- every job id, for id-prefix lookups
feed('job', id)
-- No `queued` event: the events stream starts at the claim (a queued job costs one key, not two);
-- the SSE route opens every stream with the `queued` status it leaves out.
publish_work(now)
return {id, 1, now}
