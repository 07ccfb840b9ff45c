-- Shared by every script (prepended when loading). ARGV[1] is always the key prefix.
-- Invariants: a job is in exactly one state; every change happens in one script; time is
-- Redis' own TIME; terminal states are final.
local P = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function jkey(id) return P .. 'job:' .. id end
local function wkey(id) return P .. 'worker:' .. id end
local function ekey(id) return P .. 'events:' .. id end
-- The workflow has its own key: the job hash stays small enough for Redis' compact encoding.
local function wfkey(id) return P .. 'wf:' .. id end

local TERMINAL = {succeeded = true, failed = true, cancelled = true, timed_out = true, dead = true}
local EVENTS_MAXLEN = 1000

local function event(id, kind, data)
  redis.call('XADD', ekey(id), 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'k', kind, 'd', cjson.encode(data))
end

-- Wake idle workers on every hub, but only when some worker is waiting (saves a publish per job
-- while all workers are busy).
local function publish_work(now)
  if #redis.call('ZRANGEBYSCORE', P .. 'idle', now, '+inf', 'LIMIT', 0, 1) > 0 then
    redis.call('PUBLISH', P .. 'work', '1')
  end
end

-- Tells whichever hub holds the worker's socket to send it `cancel`.
local function publish_cancel(worker, id, token, reason)
  if worker and worker ~= '' then
    redis.call('PUBLISH', P .. 'cancel', worker .. '\n' .. id .. '\n' .. token .. '\n' .. reason)
  end
end

local function add_history(id, attempt, worker, outcome, err)
  local raw = redis.call('HGET', jkey(id), 'history')
  local history = {}
  if raw and raw ~= '' then history = cjson.decode(raw) end
  local entry = {attempt = tonumber(attempt) or 0, worker_id = worker, outcome = outcome}
  if err then entry['error'] = err else entry['error'] = cjson.null end
  history[#history + 1] = entry
  redis.call('HSET', jkey(id), 'history', cjson.encode(history))
end

local function clear_worker_job(worker, id)
  if worker and worker ~= '' and redis.call('HGET', wkey(worker), 'current_job') == id then
    redis.call('HSET', wkey(worker), 'current_job', '')
    if redis.call('HGET', wkey(worker), 'state') == 'busy' then
      redis.call('HSET', wkey(worker), 'state', 'idle')
    end
  end
end

-- Ends an attempt's worker bookkeeping: off the running/deadline sets, history, worker cleared.
local function end_attempt(id, now, outcome, err)
  local j = redis.call('HMGET', jkey(id), 'attempts', 'worker_id')
  redis.call('ZREM', P .. 'running', id)
  redis.call('ZREM', P .. 'deadlines', id)
  add_history(id, j[1], j[2] or '', outcome, err)
  clear_worker_job(j[2], id)
  return j[2] or ''
end

-- Webhook outbox (redis_api/webhooks.py delivers it): a delivery record `wh:<job>.<event>` and
-- its due time in `wh:due`, written in the same script that ends the job, so no end is lost.
local function webhook_outbox(id, event, now)
  local f = redis.call('HMGET', jkey(id), 'webhook_url', 'wh_events')
  if not f[1] or f[1] == '' then return end
  -- `webhook_events` given at submit: only those; else every final event (no progress).
  local wanted = f[2] and f[2] ~= '' and (',' .. f[2] .. ','):find(',' .. event .. ',', 1, true)
  if f[2] and f[2] ~= '' and not wanted then return end
  local delivery = id .. '.' .. event
  redis.call('HSET', P .. 'wh:' .. delivery, 'job', id, 'event', event, 'attempts', 0,
    'created_ms', now, 'claim', '')
  redis.call('ZADD', P .. 'wh:due', now, delivery)
  if event ~= 'job.progress' then redis.call('HSET', jkey(id), 'wh_next_ms', now) end
end

-- Moves a job to a terminal state and starts its result TTL.
local function finish(id, status, now, ttl_ms, err)
  local key = jkey(id)
  redis.call('ZREM', P .. 'queue', id)
  redis.call('ZREM', P .. 'running', id)
  redis.call('ZREM', P .. 'deadlines', id)
  local fields = {'status', status, 'finished_ms', now}
  if err then
    fields[#fields + 1] = 'error'
    fields[#fields + 1] = cjson.encode(err)
  end
  redis.call('HSET', key, unpack(fields))
  redis.call('ZADD', P .. 'done:' .. status, now + ttl_ms, id)
  event(id, 'status', {status = status})
  event(id, 'done', {status = status})
  redis.call('PEXPIRE', key, ttl_ms)
  redis.call('PEXPIRE', ekey(id), ttl_ms)
  redis.call('PEXPIRE', wfkey(id), ttl_ms)
  local idem = redis.call('HGET', key, 'idempotency_key')
  if idem and idem ~= '' then redis.call('PEXPIRE', P .. 'idem:' .. idem, ttl_ms) end
  webhook_outbox(id, 'job.' .. status, now)
end

-- Puts a job back in its place in the queue (its original score: retries keep their turn).
local function requeue(id, now, avoid)
  local key = jkey(id)
  redis.call('HSET', key, 'status', 'queued', 'worker_id', '', 'enqueued_ms', now,
    'avoid_worker', avoid or '', 'progress', '')
  redis.call('ZADD', P .. 'queue', redis.call('HGET', key, 'score'), id)
  event(id, 'status', {status = 'queued'})
  publish_work(now)
end

-- After an attempt ends without success: requeue while attempts remain, else `dead`
-- (or `failed` at once when the error says retrying cannot help).
local function retry_or_end(id, now, ttl_ms, outcome, err, retryable)
  local worker = end_attempt(id, now, outcome, err)
  local j = redis.call('HMGET', jkey(id), 'attempts', 'max_attempts')
  if not retryable then
    finish(id, 'failed', now, ttl_ms, err)
    return 'failed'
  end
  if tonumber(j[1]) >= tonumber(j[2]) then
    finish(id, 'dead', now, ttl_ms, err)
    return 'dead'
  end
  if err then redis.call('HSET', jkey(id), 'error', cjson.encode(err)) end
  requeue(id, now, worker)
  return 'queued'
end

-- Checks a worker's report: the job must be running under this token on this worker.
local function check_owner(id, token, worker)
  local j = redis.call('HMGET', jkey(id), 'status', 'token', 'worker_id')
  if not j[1] then return 'unknown_job' end
  if TERMINAL[j[1]] then return 'already_finished' end
  if j[1] ~= 'running' or j[2] ~= token or j[3] ~= worker then return 'stale_token' end
  return nil
end

-- Does a worker (its HMGET machine_id, gpu_index, gpu_uuid, gpu_name, vram_mb) meet a job's
-- constraints (c_machine, c_gpu, c_vram)?
local function fits(c_machine, c_gpu, c_vram, w)
  if c_machine and c_machine ~= '' and c_machine ~= w[1] then return false end
  if c_gpu and c_gpu ~= '' then
    local g = string.lower(c_gpu)
    local name = string.lower(w[4] or '')
    if g ~= (w[2] or '') and g ~= string.lower(w[3] or '') and
        not (name ~= '' and string.find(name, g, 1, true)) then
      return false
    end
  end
  if c_vram and c_vram ~= '' and tonumber(c_vram) > (tonumber(w[5]) or 0) then return false end
  return true
end

local WORKER_CAPS = {'machine_id', 'gpu_index', 'gpu_uuid', 'gpu_name', 'vram_mb'}

-- A worker said `started`: its ComfyUI prompt id, and a status event for SSE. The hub may hold
-- it back and pass it with the job's next fenced script (saves a script per job).
local function record_started(id, worker, prompt_id)
  redis.call('HSET', jkey(id), 'prompt_id', prompt_id)
  event(id, 'status', {status = 'running', worker_id = worker, prompt_id = prompt_id})
end

local WORKER_CAPS = {'machine_id', 'gpu_index', 'gpu_uuid', 'gpu_name', 'vram_mb'}

-- A worker asks for a job (after `ready`, or with `completed.ready_next`).
-- Returns {1, job_id, token, attempt, timeout_s, workflow, enqueued_ms, now_ms} on a claim,
-- {0} when the queue is empty, {2} when nothing queued fits this worker or it is drained.
-- Without a claim the worker is recorded as idle (until lease_ms from now; its hub refreshes that while it waits).
local function claim_for(worker, lease_ms, scan, now)
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

  -- Drained (drain.lua): no new work. Idle in its own hash, but not offered to the queue.
  if redis.call('HEXISTS', P .. 'drains', worker) == 1 then
    redis.call('HSET', wk, 'state', 'idle')
    return {2}
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
      local f = redis.call('HMGET', key, 'timeout_s', 'workflow', 'enqueued_ms', 'extras')
      f[2] = redis.call('GET', wfkey(id)) or f[2]  -- in the hash: a job stored by an older hub
      redis.call('HSET', key, 'status', 'running', 'token', token, 'worker_id', worker,
        'started_ms', now, 'progress', '', 'prompt_id', '')
      redis.call('ZREM', P .. 'queue', id)
      redis.call('ZADD', P .. 'running', now + lease_ms, id)
      redis.call('ZADD', P .. 'deadlines', now + math.floor(tonumber(f[1]) * 1000), id)
      redis.call('ZREM', P .. 'idle', worker)
      redis.call('HSET', wk, 'current_job', id, 'state', 'busy')
      event(id, 'status', {status = 'running', worker_id = worker, attempt = attempt})
      return {1, id, token, attempt, f[1], f[2], tonumber(f[3]), now, f[4] or ''}
    end
  end
  redis.call('ZADD', P .. 'idle', now + lease_ms, worker)
  redis.call('HSET', wk, 'state', 'idle')
  return {2}
end
