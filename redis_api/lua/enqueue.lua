-- Accept a job: ARGV prefix, id, priority, timeout_s, max_attempts, workflow, constraints,
-- c_machine, c_gpu, c_vram, idempotency_key, webhook_url, extras (JSON object members sent to
-- the worker with the job, e.g. allow_partial and inputs; '' for none).
-- Returns {job_id, created (1|0), created_ms}. A repeated idempotency key returns the first job.
local id, priority, idem = ARGV[2], tonumber(ARGV[3]), ARGV[11]
local now = now_ms()
if idem ~= '' then
  local existing = redis.call('GET', P .. 'idem:' .. idem)
  if existing and redis.call('EXISTS', jkey(existing)) == 1 then
    return {existing, 0, tonumber(redis.call('HGET', jkey(existing), 'created_ms')) or now}
  end
  redis.call('SET', P .. 'idem:' .. idem, id)
end
local seq = redis.call('INCR', P .. 'seq')
-- Higher priority first, FIFO within one: priority is bounded to +-1000 so this stays exact.
local score = (1000 - priority) * 1099511627776 + seq
redis.call('HSET', jkey(id),
  'id', id, 'status', 'queued', 'priority', priority, 'timeout_s', ARGV[4],
  'max_attempts', ARGV[5], 'attempts', 0, 'score', score,
  'constraints', ARGV[7], 'c_machine', ARGV[8], 'c_gpu', ARGV[9], 'c_vram', ARGV[10],
  'idempotency_key', idem, 'webhook_url', ARGV[12], 'created_ms', now, 'enqueued_ms', now,
  'token', 0, 'worker_id', '', 'avoid_worker', '')
redis.call('SET', wfkey(id), ARGV[6])
if ARGV[13] and ARGV[13] ~= '' then redis.call('HSET', jkey(id), 'extras', ARGV[13]) end
redis.call('ZADD', P .. 'queue', score, id)
redis.call('ZADD', P .. 'ids', 0, id)  -- every job id, for id-prefix lookups
-- No `queued` event: the events stream starts at the claim (a queued job costs one key, not two);
-- the SSE route opens every stream with the `queued` status it leaves out.
publish_work(now)
return {id, 1, now}
